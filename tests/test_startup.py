"""Startup cost: `tfopt --help`, `tfopt plugins` and every `tfopt COMMAND --help` must not import the heavy libraries.

Each check runs the command in a fresh interpreter (sys.modules of this pytest process
already holds everything) and reads back which modules it imported.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tfopt.cli import LazyChoice, main

HEAVY = ("torch", "onnxruntime", "tensorflow", "transformers", "tf2onnx", "keras")
PROBE = """
import json, sys
from tfopt.cli import main
try:
    main({args!r}, standalone_mode=False)
except SystemExit:
    pass
sys.stdout.flush()
print("\\nMODULES " + json.dumps(sorted(name for name in sys.modules if "." not in name)))
"""


def imported_by(*args: str) -> tuple[str, set[str]]:
    """(stdout before the probe line, top-level modules imported) of `tfopt ARGS` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args))], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    output, _, modules = done.stdout.rpartition("\nMODULES ")
    return output, set(json.loads(modules))


@pytest.mark.parametrize("args", [("--help",), ("plugins",), ("plugins", "--json"), ("-p", "no:gpt2", "plugins")])
def test_help_and_plugins_import_no_framework_or_runtime(args):
    output, modules = imported_by(*args)
    assert output.strip()
    assert not modules & set(HEAVY), f"tfopt {' '.join(args)} imported {sorted(modules & set(HEAVY))}"


def test_help_imports_no_onnx_stack():
    """`tfopt --help` lists every command without importing onnx/onnxscript (~1 s of the startup here)."""
    output, modules = imported_by("--help")
    assert "optimize" in output and "plugins" in output
    assert not modules & {"onnx", "onnx_ir", "onnxscript", "sympy", *HEAVY}


def test_plugins_listing_still_loads_each_plugin():
    """Lazy startup must not hide hooks or versions: the listing matches an in-process plugin manager's."""
    from tfopt.plugins import build_plugin_manager, list_plugins

    output, _ = imported_by("plugins", "--json")
    listed = {entry["name"]: entry for entry in json.loads(output)}
    expected = {entry["name"]: entry for entry in list_plugins(build_plugin_manager())}
    assert listed == expected
    assert listed["default"]["hooks"] and listed["default"]["version"]


def test_lazy_command_listed_with_its_own_short_help():
    """`tfopt --help` shows a lazily imported command's short help without importing it; it must stay the command's."""
    help_text = CliRunner().invoke(main, ["--help"]).output
    ctx = main.make_context("tfopt", ["optimize", "--help"], resilient_parsing=True)
    for name in main.lazy_commands:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
        short = command.get_short_help_str(200)
        assert main.lazy_commands[name][2] == short
        listed = next(line for line in help_text.splitlines() if line.strip().startswith(f"{name} "))
        assert listed.split(None, 1)[1] == short


def test_lazy_choice_checks_values_and_lists_them():
    from tfopt.precision import PRECISIONS

    choice = LazyChoice("tfopt.precision", "PRECISIONS")
    assert choice.choices == tuple(PRECISIONS)
    result = CliRunner().invoke(main, ["run", "--plugin", "gpt2", "--precision", "int3", "--output", "x"])
    assert result.exit_code == 2
    assert "int3" in result.output and all(name in result.output for name in PRECISIONS)


@pytest.mark.parametrize("command", main.list_commands(None))
def test_every_commands_help_imports_no_framework_or_runtime(command):
    """`tfopt COMMAND --help` only prints: no ONNX Runtime (the group's log setup waits for a command that runs)."""
    output, modules = imported_by(command, "--help")
    assert f" {command} [OPTIONS]" in output and "--help" in output
    assert not modules & set(HEAVY), f"tfopt {command} --help imported {sorted(modules & set(HEAVY))}"


@pytest.mark.parametrize("command", [name for name in main.list_commands(None) if name != "optimize"])
def test_commands_help_imports_no_onnx_stack(command):
    """Choice lists (precisions, fusions, targets) come from tfopt.results: a --help loads no onnx
    (`run --help` took ~1.2 s with it, ~0.2 s without). `optimize` lives in tfopt.optimizer and still does."""
    _, modules = imported_by(command, "--help")
    assert not modules & {"onnx", "onnx_ir", "onnxscript"}, f"tfopt {command} --help imported {sorted(modules & {'onnx', 'onnx_ir', 'onnxscript'})}"


def test_onnxruntime_log_is_set_up_for_a_command_that_runs_not_for_a_help(monkeypatch):
    from tfopt import cli

    asked = []

    @contextlib.contextmanager
    def recording(verbose, *, onnxruntime=True):
        asked.append(onnxruntime)
        yield

    monkeypatch.setattr(cli, "third_party_output", recording)
    for args in (["verify", "--help"], ["verify", "-h"], ["plugins"], ["verify", "missing.onnx", "--reference", "x.onnx"],
                 ["verify", "--", "--help"]):
        CliRunner().invoke(main, args)
    assert asked == [False, False, False, True, True]
