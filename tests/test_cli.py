"""Every `tfopt` subcommand through click's CliRunner, with fake adapters installed as entry points."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

from tfopt.cli import main, parse_option_value

import tfopt_host_fakes as fakes


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


def _one_error_line(result, code=2):
    """The error is one line, the last on stderr; anything before it is progress, never a traceback."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if not line.startswith("tfopt: ") or line.startswith("tfopt: error: ")]
    assert errors == lines[-1:] and lines[-1].startswith("tfopt: error: "), result.stderr
    return lines[-1]


def _run_dir(cli, tmp_path, name="out", *extra):
    out = tmp_path / name
    result = cli("run", "--plugin", "fake_a", "--output", str(out), *extra)
    assert result.exit_code == 0, result.output
    return out


def test_cli_plugins_lists_the_broken_one_with_its_error(cli, installed):
    installed("fake_a", "broken", "timer")
    result = cli("plugins")
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "failed" in lines["broken"] and "ImportError: simulated" in lines["broken"]
    assert "adapter" in lines["fake_a"] and "hooks: export, fuse, convert_precision" in lines["fake_a"]
    assert "extension" in lines["timer"] and "built-in" in lines["default"]


def test_cli_plugins_json(cli, installed):
    installed("fake_a", "broken")
    listing = {entry["name"]: entry for entry in json.loads(cli("plugins", "--json").stdout)}
    assert set(listing) == {"default", "fake_a", "broken"}
    assert listing["fake_a"]["is_adapter"] and listing["fake_a"]["hooks"] == [
        "export", "fuse", "convert_precision", "make_dummy_inputs", "verify", "benchmark"
    ]
    assert listing["broken"]["status"] == "failed" and listing["broken"]["error"].startswith("ImportError")
    assert listing["default"]["version"] and not listing["default"]["is_adapter"]


def test_cli_allow_list_env_including_empty(cli, installed):
    installed("fake_a", "fake_b")
    only_b = json.loads(cli("plugins", "--json", env={"TFOPT_PLUGINS": "fake_b"}).stdout)
    assert {e["name"]: e["status"] for e in only_b} == {"default": "active", "fake_a": "not allowed", "fake_b": "active"}
    none = json.loads(cli("plugins", "--json", env={"TFOPT_PLUGINS": ""}).stdout)
    assert [e["name"] for e in none if e["status"] == "active"] == ["default"]
    line = _one_error_line(cli("run", "--plugin", "fake_a", "--output", "out", env={"TFOPT_PLUGINS": ""}))
    assert "not allowed" in line


def test_cli_allow_list_naming_an_uninstalled_plugin_warns_in_one_line(cli, installed, tmp_path):
    installed("fake_a", "fake_b")
    for allow in ("nosuch", "fake_a,nosuch"):
        result = cli("plugins", "--json", env={"TFOPT_PLUGINS": allow})
        assert result.exit_code == 0 and json.loads(result.stdout)  # stdout stays machine-readable
        assert result.stderr.splitlines() == [
            "tfopt: warning: TFOPT_PLUGINS names 'nosuch', which is not installed (installed plugins: fake_a, fake_b)"
        ]
    (tmp_path / "tfopt.toml").write_text('[plugins]\nallow = ["nosuch"]\n')
    quiet = cli("-q", "plugins")
    assert quiet.stderr.startswith("tfopt: warning: plugins.allow of ") and "'nosuch', which is not installed" in quiet.stderr
    assert len(quiet.stderr.splitlines()) == 1


def test_cli_block_with_p_no(cli, installed, tmp_path):
    installed("fake_a", "fake_b")
    listing = json.loads(cli("-p", "no:fake_a", "-p", "no:fake_b", "plugins", "--json").stdout)
    assert {e["name"]: e["status"] for e in listing}["fake_a"] == "blocked"
    line = _one_error_line(cli("-p", "no:fake_a", "run", "--plugin", "fake_a", "--output", str(tmp_path / "o")))
    assert line == "tfopt: error: plugin 'fake_a' is blocked (blocked by -p no:fake_a); installed adapters: fake_b"
    assert "expects no:NAME" in _one_error_line(cli("-p", "fake_a", "plugins"))


def test_cli_config_file_block(cli, installed, tmp_path):
    installed("fake_a", "fake_b")
    (tmp_path / "tfopt.toml").write_text('[plugins]\nblock = ["fake_b"]\n')
    listing = {e["name"]: e for e in json.loads(cli("plugins", "--json").stdout)}
    assert listing["fake_b"]["status"] == "blocked" and "tfopt.toml" in listing["fake_b"]["reason"]
    (tmp_path / "tfopt.toml").write_text("[plugins\n")
    assert "cannot read config" in _one_error_line(cli("plugins"))


def test_cli_unknown_plugin_is_one_line_listing_installed(cli, installed, tmp_path):
    installed("fake_a", "fake_b", "timer", "broken")
    line = _one_error_line(cli("run", "--plugin", "gpt9", "--output", str(tmp_path / "out")))
    assert line == "tfopt: error: unknown plugin 'gpt9'; installed adapters: fake_a, fake_b"
    assert not (tmp_path / "out").exists()


def test_cli_run_writes_outputs_summary_and_progress(cli, installed, tmp_path):
    fakes_module = installed("fake_a", "fake_b", "timer")
    out = _run_dir(cli, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["exported.onnx", "optimized.onnx", "report.html", "report.json"]
    assert {adapter for adapter, _ in fakes_module.CALLS} == {"fake_a"}
    assert fakes_module.TIMER.order == ["export", "fuse", "convert_precision", "make_dummy_inputs", "verify", "benchmark"]


def test_cli_run_output(cli, installed, tmp_path):
    installed("fake_a")
    result = cli("run", "--plugin", "fake_a", "--output", str(tmp_path / "out"))
    assert result.stdout.splitlines()[0] == "tfopt PASSED: fake_a on its default model (fp32)"
    assert "parity vs fake (fp32" in result.stdout and "latency p50 in ms" in result.stdout
    assert "tfopt: [1/6] export ..." in result.stderr and "tfopt: benchmark done in" in result.stderr
    quiet = cli("-q", "run", "--plugin", "fake_a", "--output", str(tmp_path / "quiet"))
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_cli_run_options_reach_the_context(cli, installed, tmp_path):
    installed("export_only")
    out = tmp_path / "out"
    result = cli(
        "run", "--plugin", "export_only", "--output", str(out), "--precision", "int8", "--no-benchmark",
        "--batch-sizes", "1,2", "--sequence-lengths", "4", "--input-int32", "--disable", "attention",
        "--exporter", "legacy", "--attn-implementation", "eager", "--opset", "17",
        "--option", "tolerance=0.5", "--option", "note=hello", "--model", "my-model", "--target", "cuda",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["options"] == {
        "tolerance": 0.5, "note": "hello", "exporter": "legacy", "attn_implementation": "eager", "opset": 17,
        "precision": "int8", "input_int32": True, "benchmark": False, "batch_sizes": [1, 2], "sequence_lengths": [4],
        "disabled": ["attention"], "target": "cuda",
    }
    assert report["source"] == "my-model" and report["benchmark"] is None
    assert report["outputs"]["final"] == "optimized.int8.onnx" and (out / "optimized.int8.onnx").is_file()
    assert len(report["make_dummy_inputs"]) == 2


def test_cli_run_failed_verification_exits_1_and_keeps_the_report(cli, installed, tmp_path, monkeypatch):
    fakes_module = installed("fake_a")
    monkeypatch.setattr(fakes_module.ADAPTER_A, "fused_weight_offset", 1.0)
    out = tmp_path / "out"
    result = cli("run", "--plugin", "fake_a", "--output", str(out))
    line = _one_error_line(result, code=1)
    assert line.startswith("tfopt: error: verification failed: max abs diff") and str(out / "report.json") in line
    assert result.stdout.startswith("tfopt FAILED")
    assert json.loads((out / "report.json").read_text())["status"] == "failed"


def test_cli_run_with_a_fusion_left_undone_exits_3_unless_allowed(cli, installed, tmp_path, monkeypatch):
    fakes_module = installed("fake_a")
    monkeypatch.setattr(fakes_module.ADAPTER_A, "fused_missing", ("Attention: expected 2, found 1",))
    out = tmp_path / "out"
    result = cli("run", "--plugin", "fake_a", "--output", str(out))
    line = _one_error_line(result, code=3)
    assert line.startswith("tfopt: error: fusion incomplete: Attention: expected 2, found 1;") and "--allow-missing-fusions" in line
    assert result.stdout.startswith("tfopt INCOMPLETE")
    assert json.loads((out / "report.json").read_text())["status"] == "incomplete"
    accepted = cli("run", "--plugin", "fake_a", "--output", str(out), "--allow-missing-fusions")
    assert accepted.exit_code == 0 and accepted.stdout.startswith("tfopt PASSED")
    assert "warning: expected fusion did not happen: Attention: expected 2, found 1" in accepted.stdout


def test_cli_verify_cannot_pass_on_an_earlier_runs_results(cli, installed, tmp_path, monkeypatch):
    fakes_module = installed("fake_a")
    out = _run_dir(cli, tmp_path)
    (out / "optimized.fp16.onnx").write_bytes(b"from a run before that one")
    assert cli("verify", str(out)).exit_code == 0
    line = _one_error_line(cli("run", "--plugin", "gpt9", "--output", str(out)))  # this run fails at once
    assert "unknown plugin 'gpt9'" in line
    assert "no report.json here" in _one_error_line(cli("verify", str(out)))
    assert list(out.iterdir()) == []
    _run_dir(cli, tmp_path)  # passes again; then a run that fails verification replaces it
    monkeypatch.setattr(fakes_module.ADAPTER_A, "fused_weight_offset", 1.0)
    assert cli("run", "--plugin", "fake_a", "--output", str(out)).exit_code == 1
    assert json.loads((out / "report.json").read_text())["status"] == "failed"
    assert cli("verify", str(out)).exit_code == 1


def test_cli_run_bad_inputs_are_one_line(cli, installed, tmp_path):
    installed("fake_a")
    (tmp_path / "file").write_text("x")
    assert "exists and is not a directory" in _one_error_line(cli("run", "--plugin", "fake_a", "--output", str(tmp_path / "file")))
    assert "--batch-sizes expects" in _one_error_line(cli("run", "--plugin", "fake_a", "--output", "o", "--batch-sizes", "x"))
    assert "--option expects key=value" in _one_error_line(cli("run", "--plugin", "fake_a", "--output", "o", "--option", "novalue"))
    usage = _one_error_line(cli("run", "--output", "o"))
    assert "Missing option '--plugin'" in usage and "tfopt run --help" in usage
    assert "Invalid value for '--precision'" in _one_error_line(cli("run", "--plugin", "fake_a", "--output", "o", "--precision", "fp8"))


def test_cli_run_stage_error_names_the_kept_report(cli, installed, tmp_path):
    installed("export_only")
    line = _one_error_line(cli("run", "--plugin", "export_only", "--output", str(tmp_path / "out"), "--option", "precision=bf8"))
    assert "unknown precision 'bf8'" in line and "(report: " in line
    assert json.loads((tmp_path / "out" / "report.json").read_text())["status"] == "error"


def test_cli_export(cli, installed, tmp_path):
    fakes_module = installed("fake_a", "fake_b")
    out = tmp_path / "exp"
    result = cli("export", "--plugin", "fake_b", "--output", str(out))
    assert result.exit_code == 0
    assert result.stdout.startswith(f"exported {out / 'exported.onnx'} (hand-built; inputs input_ids:int64")
    assert fakes_module.CALLS == [("fake_b", "export")]
    assert json.loads((out / "report.json").read_text())["status"] == "exported"


def test_cli_verify_a_run_dir(cli, installed, tmp_path):
    fakes_module = installed("fake_a")
    out = _run_dir(cli, tmp_path)
    fakes_module.CALLS.clear()
    result = cli("verify", str(out))
    assert result.exit_code == 0 and result.stdout.startswith("parity vs fake (fp32")
    assert fakes_module.CALLS == [("fake_a", "make_dummy_inputs"), ("fake_a", "verify")]
    as_json = json.loads(cli("verify", str(out), "--json").stdout)
    assert as_json["passed"] is True and as_json["reference"] == "fake"


def test_cli_verify_files_with_the_generic_stages(cli, installed, tmp_path):
    installed("fake_a")
    raw, same, off = tmp_path / "raw.onnx", tmp_path / "same.onnx", tmp_path / "off.onnx"
    onnx.save(fakes.tiny_model(), raw)
    onnx.save(fakes.tiny_model(), same)
    onnx.save(fakes.tiny_model(weight_offset=0.5), off)
    ok = cli("verify", str(same), "--reference", str(raw), "--batch-sizes", "1,2", "--sequence-lengths", "4")
    assert ok.exit_code == 0 and "parity vs onnxruntime:exported" in ok.stdout and "2 input shapes" in ok.stdout
    assert "verification failed" in _one_error_line(cli("verify", str(off), "--reference", str(raw)), code=1)
    assert cli("verify", str(off), "--reference", str(raw), "--tolerance", "100").exit_code == 0
    assert "needs --reference" in _one_error_line(cli("verify", str(same)))
    assert "no such file" in _one_error_line(cli("verify", str(tmp_path / "missing.onnx")))


def test_cli_bench_run_dir_and_files(cli, installed, tmp_path):
    installed("fake_a")
    out = _run_dir(cli, tmp_path)
    result = cli("bench", str(out))
    assert result.exit_code == 0 and "ort:tfopt/ort:raw" in result.stdout
    rows = json.loads(cli("bench", str(out / "exported.onnx"), str(out / "optimized.onnx"), "--repeat", "2", "--batch-sizes", "2",
                          "--sequence-lengths", "4,6", "--json").stdout)["rows"]
    assert [(r["engine"], r["batch_size"], r["sequence_length"]) for r in rows] == [
        ("ort:exported.onnx", 2, 4), ("ort:optimized.onnx", 2, 4), ("ort:exported.onnx", 2, 6), ("ort:optimized.onnx", 2, 6)
    ]
    assert "no such ONNX file" in _one_error_line(cli("bench", str(tmp_path / "nope.onnx")))
    assert "no report.json here" in _one_error_line(cli("bench", str(tmp_path)))


@pytest.mark.parametrize("command", ["run", "export", "optimize", "verify", "bench", "plugins"])
def test_cli_help_has_examples(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0 and "Example" in result.stdout


def test_cli_version(cli):
    assert cli("--version").stdout.startswith("tfopt, version ")


def test_option_values_are_parsed():
    assert parse_option_value("8") == 8
    assert parse_option_value("0.5") == 0.5
    assert parse_option_value("true") is True
    assert parse_option_value("1,8") == [1, 8]
    assert parse_option_value("[1, 2]") == [1, 2]
    assert parse_option_value("sdpa") == "sdpa"
    assert parse_option_value("a,b") == ["a", "b"]


def test_cli_traceback_only_on_request(cli, installed, tmp_path):
    installed("export_only")
    args = ("run", "--plugin", "export_only", "--output", str(tmp_path / "o"), "--batch-sizes", "1", "--option", "id_limit=oops")
    quiet = cli(*args)
    assert "Traceback" not in quiet.stderr and "set TFOPT_TRACEBACK=1" in _one_error_line(quiet)
    loud = cli(*args, env={"TFOPT_TRACEBACK": "1"})
    assert loud.exit_code == 2 and "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1].startswith("tfopt: error: stage 'make_dummy_inputs' failed")


def test_cli_bench_and_verify_need_a_finished_run(cli, installed, tmp_path):
    installed("fake_a")
    out = tmp_path / "exp"
    assert cli("export", "--plugin", "fake_a", "--output", str(out)).exit_code == 0
    assert "no optimized model" in _one_error_line(cli("bench", str(out)))
    assert "no final model" in _one_error_line(cli("verify", str(out)))


def test_python_dash_m_tfopt(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tfopt", "plugins", "--json"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and '"name": "default"' in done.stdout
