"""Options an adapter declares (``tfopt_options``): typed flags of `tfopt run/export --plugin NAME`, in its --help."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tfopt import PluginOption, plugins
from tfopt.cli import export_command, main, run_command
from tfopt.plugin_options import BUILTIN_FLAGS, BUILTIN_KEYS, DECODER_PRECISION_OPTIONS
from tfopt.plugins import adapter_options, build_plugin_manager, list_plugins, register_plugin

import tfopt_host_fakes as fakes


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


def _error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("tfopt: error: "), result.stderr
    return lines[-1]


def _options_of_run(cli, tmp_path, *args, command="run"):
    out = tmp_path / "out"
    extra = ("--no-benchmark",) if command == "run" else ()
    result = cli(command, "--plugin", "with_options", "--output", str(out), *extra, *args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())["options"]


def test_builtin_flags_and_keys_are_the_commands_own():
    """The names an adapter may not take are exactly what `run` and `export` define (a new flag must be added)."""
    flags, keys = {"-h", "--help"}, set()
    for command in (run_command, export_command):
        for param in command.params:
            flags.update(param.opts, param.secondary_opts)
            keys.add(param.name)
    where = "tfopt.plugin_options.BUILTIN_FLAGS/BUILTIN_KEYS must list the flags and option keys of `run` and `export`"
    assert BUILTIN_FLAGS == flags, where
    assert BUILTIN_KEYS == keys - {"plugin", "source", "output", "extra"}, where  # where the run goes is no stage option


def test_help_lists_the_adapters_options_typed_with_defaults(cli, installed):
    installed("with_options", "fake_a")
    text = cli("run", "--plugin", "with_options", "--help").stdout
    own, _, adapter = text.partition("Options of the with_options adapter (each also --option KEY=VALUE):")
    assert "--data FILE" in adapter and "A data file." in adapter
    assert "--epochs INTEGER" in adapter and "[default: 2]" in adapter
    assert "--rate FLOAT" in adapter and "--shuffle / --no-shuffle" in adapter and "[default: --shuffle]" in adapter
    assert "--lengths 1,2,..." in adapter and "[default: 4,8]" in adapter and "--mode [fast|exact]" in adapter
    assert "--precision" in own and "--epochs" not in own
    assert "--data" in cli("export", "--help", "--plugin=with_options").stdout  # either order, either spelling
    assert "fake_a declares no options of its own" in cli("run", "--plugin", "fake_a", "--help").stdout
    assert "--plugin NAME --help` also lists" in cli("run", "--help").stdout


def test_flags_set_the_options_typed(cli, installed, tmp_path):
    installed("with_options")
    options = _options_of_run(cli, tmp_path, "--data", "x.csv", "--epochs", "3", "--rate", "1e-3", "--no-shuffle",
                              "--lengths", "1,16", "--mode", "exact")
    assert {key: options[key] for key in ("data", "epochs", "rate", "shuffle", "lengths", "mode")} == {
        "data": "x.csv", "epochs": 3, "rate": 0.001, "shuffle": False, "lengths": [1, 16], "mode": "exact"
    }
    unset = _options_of_run(cli, tmp_path, "--epochs", "1")
    assert "data" not in unset and "shuffle" not in unset  # a default is the adapter's to apply, never written in
    assert _options_of_run(cli, tmp_path, "--data", "y.jsonl", command="export")["data"] == "y.jsonl"


def test_option_pairs_keep_working_typed_and_an_explicit_flag_wins(cli, installed, tmp_path):
    installed("with_options")
    options = _options_of_run(cli, tmp_path, "--option", "data=123", "--option", "epochs=4", "--option", "lengths=2,3",
                              "--option", "shuffle=false", "--option", "other=1,2")
    assert options["data"] == "123" and options["epochs"] == 4 and options["lengths"] == [2, 3]
    assert options["shuffle"] is False and options["other"] == [1, 2]  # undeclared: read as before
    assert _options_of_run(cli, tmp_path, "--option", "data=1,0,1;2,3,4")["data"] == "1,0,1;2,3,4"  # a str stays one
    options = _options_of_run(cli, tmp_path, "--epochs", "5", "--option", "epochs=4", "--option", "rate=0.1")
    assert options["epochs"] == 5 and options["rate"] == 0.1


@pytest.mark.parametrize("args, message", [
    (("--epochs", "two"), "Invalid value for '--epochs': 'two' is not a valid integer."),
    (("--mode", "slow"), "Invalid value for '--mode': 'slow' is not one of 'fast', 'exact'."),
    (("--lengths", "a,b"), "Invalid value for '--lengths'"),
    (("--option", "epochs=two"), "--option epochs=two: 'two' is not a valid integer. (--epochs takes int)"),
    (("--option", "mode=slow"), "--option mode=slow:"),
])
def test_a_bad_value_is_one_line(cli, installed, tmp_path, args, message):
    installed("with_options")
    line = _error(cli("run", "--plugin", "with_options", "--output", str(tmp_path / "out"), *args))
    assert message in line
    assert not (tmp_path / "out").exists()


def test_flags_belong_to_the_chosen_adapter_only(cli, installed, tmp_path):
    installed("with_options", "fake_a")
    line = _error(cli("run", "--plugin", "fake_a", "--output", str(tmp_path / "out"), "--epochs", "3"))
    assert line == "tfopt: error: No such option '--epochs'. (see 'tfopt run --plugin fake_a --help')"
    line = _error(cli("run", "--plugin", "with_optoins", "--output", str(tmp_path / "out"), "--epochs", "3"))
    assert line == "tfopt: error: unknown plugin 'with_optoins'; installed adapters: fake_a, with_options"


class _Declaring(fakes.ExportOnlyAdapter):
    def __init__(self, *options):
        super().__init__([])
        self.tfopt_options = options


@pytest.mark.parametrize("options, message", [
    ((PluginOption("opset", int),), "option 'opset': --opset is a built-in flag of tfopt run/export"),
    ((PluginOption("help"),), "--help is a built-in flag"),
    ((PluginOption("no_benchmark", bool),), "--no-benchmark is a built-in flag"),
    ((PluginOption("disabled"),), "'disabled' is a built-in option of tfopt run/export"),
    ((PluginOption("data"), PluginOption("data")), "option 'data' is declared twice"),
    ((PluginOption("epochs", complex),), "option 'epochs': type must be one of str, int, float, bool, list[int]"),
    ((PluginOption("epochs", int, "two"),), "option 'epochs': its default 'two' does not fit its type (int)"),
    ((PluginOption("mode", int, choices=("a",)),), "choices must be a non-empty tuple of strings, with type str"),
    ((PluginOption("two words"),), "the name must be a Python identifier"),
    (("data",), "tfopt_options must hold tfopt.PluginOption, got str"),
])
def test_a_bad_declaration_refuses_the_plugin_at_load_time(fresh_fakes, options, message):
    pm = build_plugin_manager(entry_points=[])
    assert not register_plugin(pm, _Declaring(*options), "bad")
    entry = {item["name"]: item for item in list_plugins(pm)}["bad"]
    assert entry["status"] == "failed" and message in entry["error"], entry["error"]
    assert pm.get_plugin("bad") is None


def test_a_refused_plugin_says_why_on_the_command_line(cli, installed, tmp_path, monkeypatch):
    monkeypatch.setattr(fakes, "WITH_OPTIONS", _Declaring(PluginOption("precision")))
    installed("with_options")
    line = _error(cli("run", "--plugin", "with_options", "--output", str(tmp_path / "out")))
    assert "plugin 'with_options' failed to load (option 'precision': --precision is a built-in flag" in line
    assert "failed" in cli("plugins").stdout


def test_only_an_adapter_declares_options(fresh_fakes):
    class Extension(fakes.StageTimer):
        tfopt_options = (PluginOption("timer_file"),)

    pm = build_plugin_manager(entry_points=[])
    assert not register_plugin(pm, Extension(), "timer")
    assert "declares tfopt_options but is not an adapter" in {e["name"]: e for e in list_plugins(pm)}["timer"]["error"]


def test_installed_adapters_declarations_load():
    """Every installed adapter that declares options loads with them (none collides with a built-in flag)."""
    pm = build_plugin_manager(environ={})
    failed = {entry["name"]: entry["error"] for entry in list_plugins(pm) if entry["status"] == "failed"}
    assert not {name: error for name, error in failed.items() if "option" in (error or "")}
    for name in plugins.adapter_names(pm):
        for option in adapter_options(pm, name):
            assert option.help, f"{name}: option {option.name} has no help"


def test_decoder_precision_options_match_what_decoder_precision_reads():
    precision = pytest.importorskip("tfopt.precision")
    from tfopt import decoder_precision

    by_name = {option.name: option for option in DECODER_PRECISION_OPTIONS}
    assert set(by_name) == {decoder_precision.LM_HEAD_OPTION, decoder_precision.INT8_METHOD_OPTION,
                            decoder_precision.INT4_BLOCK_OPTION, decoder_precision.ROUNDING_OPTION,
                            decoder_precision.CALIBRATION_TEXT_OPTION}
    assert set(by_name["lm_head_precision"].choices) == set(precision.LM_HEAD_PRECISIONS)
    assert set(by_name["int8_method"].choices) == set(precision.INT8_METHODS)
    assert by_name["int8_method"].default == decoder_precision.DEFAULT_INT8_METHOD
    assert by_name["int4_block_size"].default == precision.INT4_BLOCK_SIZE
    assert set(by_name["weight_rounding"].choices) == set(decoder_precision.ROUNDINGS)
