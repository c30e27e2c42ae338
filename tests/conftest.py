"""Host test fixtures: a clean plugin environment per test and the fake plugins of tfopt_host_fakes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tfopt_host_fakes, importable by entry points

import tfopt_host_fakes as fakes  # noqa: E402

from tfopt import plugins  # noqa: E402
from tfopt.testing import run_context, tfopt_pm  # noqa: E402,F401 (the plugin-author kit, used here too)


@pytest.fixture(autouse=True)
def clean_plugin_environment(monkeypatch, tmp_path):
    """No deployment settings leak in: no TFOPT_PLUGINS, no TFOPT_CONFIG, no ./tfopt.toml."""
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    monkeypatch.delenv(plugins.CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fresh_fakes(monkeypatch):
    """New fake plugin objects (empty call logs) behind the fake entry points."""
    calls: list = []
    monkeypatch.setattr(fakes, "CALLS", calls)
    monkeypatch.setattr(fakes, "ADAPTER_A", fakes.FakeAdapter("fake_a", calls))
    monkeypatch.setattr(fakes, "ADAPTER_B", fakes.FakeAdapter("fake_b", calls))
    monkeypatch.setattr(fakes, "EXPORT_ONLY", fakes.ExportOnlyAdapter(calls))
    monkeypatch.setattr(fakes, "TIMER", fakes.StageTimer())
    return fakes


@pytest.fixture
def installed(monkeypatch, fresh_fakes):
    """Make ``discover_entry_points`` return the named fake entry points (the CLI's view of what is installed)."""

    def install(*names: str):
        entry_points = [fakes.entry_point(name, fakes.FAKE_ENTRY_POINTS[name]) for name in names]
        monkeypatch.setattr(plugins, "discover_entry_points", lambda: entry_points)
        return fresh_fakes

    return install


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT exported with the legacy exporter and eager attention (the form ORT's tool also fuses)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tfopt_host_models import export_tiny_bert

    return export_tiny_bert(tmp_path_factory.mktemp("bert") / "bert.onnx")


# Cheap settings for runs whose numbers only feed a report: a few timed calls, few shapes.
QUICK_RUN_OPTIONS = ("--option", "bench_repeat=3", "--option", "bench_warmup=1", "--option", "bench_sequence_lengths=8,16",
                     "--batch-sizes", "1,2", "--sequence-lengths", "8,16")


@pytest.fixture(scope="session")
def tiny_bert_runs(tmp_path_factory):
    """Three bert_pt runs of tiny-bert, fp32 (with --profile), fp16 and int8, made in-process once per session."""
    import importlib.metadata

    from click.testing import CliRunner

    from tfopt.cli import main

    if "bert_pt" not in {entry_point.name for entry_point in importlib.metadata.entry_points(group="tfopt")}:
        pytest.skip("needs the bert_pt adapter (PyTorch deployment)")
    base = tmp_path_factory.mktemp("tiny-bert-runs")
    runs = {}
    for precision in ("fp32", "fp16", "int8"):
        extra = ("--profile", "--option", "profile_samples=5", "--option", "profile_sequence_length=16") if precision == "fp32" else ()
        args = ["-q", "run", "--plugin", "bert_pt", "--model", "tiny-bert", "--precision", precision, *QUICK_RUN_OPTIONS, *extra,
                "--output", str(base / precision)]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        runs[precision] = base / precision
    return runs
