"""The plugin-author kit: fixtures work, and check_adapter passes good adapters and catches broken ones."""

from __future__ import annotations

import pytest

from tfopt import hookimpl
from tfopt.plugins import adapter_caller, adapter_names, build_plugin_manager, list_plugins, register_plugin
from tfopt.results import ExportResult, FuseResult
from tfopt.testing import check_adapter


def _pm(fakes, *names):
    return build_plugin_manager(entry_points=[fakes.entry_point(n, fakes.FAKE_ENTRY_POINTS[n]) for n in names])


def test_tfopt_pm_fixture_has_the_builtins_and_ignores_the_deployment(tfopt_pm, monkeypatch):
    assert tfopt_pm.get_plugin("default") is not None
    installed = {entry["name"] for entry in list_plugins(tfopt_pm)}
    assert "default" in installed


def test_run_context_factory_gives_fresh_dirs(run_context):
    first, second = run_context("fam", source="tiny", precision="fp16"), run_context()
    assert first.work_dir != second.work_dir and first.work_dir.is_dir() and second.work_dir.is_dir()
    assert (first.family, first.source, first.option("precision")) == ("fam", "tiny", "fp16")
    assert second.family == "test" and second.options == {}


def test_check_adapter_passes_a_conforming_adapter(fresh_fakes, tmp_path):
    outcome = check_adapter("fake_a", pm=_pm(fresh_fakes, "fake_a", "fake_b"), work_dir=tmp_path)
    assert outcome.passed and outcome.report["status"] == "passed"
    assert {adapter for adapter, _ in fresh_fakes.CALLS} == {"fake_a"}


def test_check_adapter_passes_an_export_only_adapter_on_the_defaults(fresh_fakes, tmp_path):
    outcome = check_adapter("export_only", pm=_pm(fresh_fakes, "export_only"), work_dir=tmp_path)
    assert outcome.report["stages"]["verify"]["implementations"] == ["default"]


def test_check_adapter_catches_failed_verification(fresh_fakes, tmp_path, monkeypatch):
    monkeypatch.setattr(fresh_fakes.ADAPTER_A, "fused_weight_offset", 1.0)
    with pytest.raises(AssertionError, match="verify failed: max abs"):
        check_adapter("fake_a", pm=_pm(fresh_fakes, "fake_a"), work_dir=tmp_path)


class _LyingFuse:
    """Claims fused-op counts the file does not have, and an unmet expectation."""

    def __init__(self, inner):
        self.inner = inner

    @hookimpl
    def export(self, ctx) -> ExportResult:
        return self.inner.export(ctx)

    @hookimpl
    def fuse(self, ctx, exported) -> FuseResult:
        result = self.inner.fuse(ctx, exported)
        result.op_counts = {**result.op_counts, "Attention": 1}
        return result


class _MissingFusion(_LyingFuse):
    @hookimpl
    def fuse(self, ctx, exported) -> FuseResult:
        result = self.inner.fuse(ctx, exported)
        result.missing = ["Attention: expected 1, found 0"]
        return result


@pytest.mark.parametrize(
    "adapter, message",
    [(_LyingFuse, "reported op counts .* != the file's"), (_MissingFusion, "expected fusions did not happen")],
)
def test_check_adapter_catches_broken_fusion_promises(fresh_fakes, tmp_path, adapter, message):
    pm = _pm(fresh_fakes)
    register_plugin(pm, adapter(fresh_fakes.FakeAdapter("inner", [])), "liar")
    with pytest.raises(AssertionError, match=message):
        check_adapter("liar", pm=pm, work_dir=tmp_path)


def test_check_adapter_turns_pipeline_errors_into_assertions(fresh_fakes, tmp_path):
    class NoExportFile:
        @hookimpl
        def export(self, ctx):
            result = fresh_fakes.FakeAdapter("inner", []).export(ctx)
            result.model_path.unlink()
            return result

    pm = _pm(fresh_fakes)
    register_plugin(pm, NoExportFile(), "ghost")
    with pytest.raises(AssertionError, match="adapter 'ghost': the pipeline failed: stage 'export' reported"):
        check_adapter("ghost", pm=pm, work_dir=tmp_path)
    assert pm.get_plugin("tfopt-testing-capture") is None  # the kit cleaned up after itself


def test_installed_adapters_are_reachable_through_the_kit(tfopt_pm, run_context):
    for name in adapter_names(tfopt_pm):
        caller = adapter_caller(tfopt_pm, name, "export")
        assert name in {impl.plugin_name for impl in caller.get_hookimpls()}
