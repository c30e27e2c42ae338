"""One run through the pipeline with fake adapters: which hooks run, what lands on disk, how failures end."""

from __future__ import annotations

import json

import pytest

from tfopt import hookimpl
from tfopt.errors import TfoptError, VerificationFailed
from tfopt.pipeline import STAGE_ORDER, StageRunner, run_pipeline
from tfopt.plugins import build_plugin_manager, register_plugin
from tfopt.results import RunContext


def _pm(fakes, *names):
    return build_plugin_manager(entry_points=[fakes.entry_point(n, fakes.FAKE_ENTRY_POINTS[n]) for n in names])


def _ctx(tmp_path, family, **options):
    return RunContext(family=family, source=None, work_dir=tmp_path / "out", options=options)


def test_extension_wraps_every_stage_while_only_the_selected_adapter_runs(fresh_fakes, tmp_path):
    pm = _pm(fresh_fakes, "fake_a", "fake_b", "timer")
    timer = fresh_fakes.TIMER

    run_pipeline(pm, "fake_a", _ctx(tmp_path / "a", "fake_a"))
    assert fresh_fakes.CALLS == [("fake_a", stage) for stage in STAGE_ORDER]
    assert timer.order == list(STAGE_ORDER)
    assert all(seconds >= 0 for seconds in timer.seconds.values())

    fresh_fakes.CALLS.clear()
    timer.order.clear()
    run_pipeline(pm, "fake_b", _ctx(tmp_path / "b", "fake_b"))
    assert fresh_fakes.CALLS == [("fake_b", stage) for stage in STAGE_ORDER]
    assert timer.order == list(STAGE_ORDER)
    assert timer.families == {"fake_a", "fake_b"}


def test_run_writes_exported_optimized_and_report(fresh_fakes, tmp_path):
    pm = _pm(fresh_fakes, "fake_a", "timer")
    progress = []
    ctx = _ctx(tmp_path, "fake_a")
    ctx.progress = progress.append
    outcome = run_pipeline(pm, "fake_a", ctx)
    out = tmp_path / "out"
    assert outcome.passed and outcome.report_path == out / "report.json"
    assert (out / "exported.onnx").is_file() and (out / "optimized.onnx").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed"
    assert report["outputs"] == {"exported": "exported.onnx", "optimized": "optimized.onnx", "final": "optimized.onnx", "report": "report.json"}
    assert report["plugins"]["adapter"]["name"] == "fake_a"
    assert report["plugins"]["extensions"] == ["default", "timer"]
    assert report["stages"]["fuse"]["implementations"] == ["fake_a", "default"]
    assert report["verify"]["passed"] is True and report["benchmark"]["rows"]
    assert report["make_dummy_inputs"][1]["input_ids"] == {"shape": [2, 6], "dtype": "int64"}
    assert any(line.startswith("[1/6] export") for line in progress)
    assert any(line.startswith("benchmark done in") for line in progress)


def test_failed_verification_keeps_the_report_then_raises(fresh_fakes, tmp_path, monkeypatch):
    monkeypatch.setattr(fresh_fakes.ADAPTER_A, "fused_weight_offset", 1.0)
    pm = _pm(fresh_fakes, "fake_a")
    with pytest.raises(VerificationFailed, match=r"verification failed: max abs diff .* report kept at"):
        run_pipeline(pm, "fake_a", _ctx(tmp_path, "fake_a"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed" and report["verify"]["passed"] is False
    assert report["benchmark"] is not None  # every stage still ran


def test_raise_on_failure_false_returns_the_outcome(fresh_fakes, tmp_path, monkeypatch):
    monkeypatch.setattr(fresh_fakes.ADAPTER_A, "fused_weight_offset", 1.0)
    outcome = run_pipeline(_pm(fresh_fakes, "fake_a"), "fake_a", _ctx(tmp_path, "fake_a"), raise_on_failure=False)
    assert outcome.passed is False and outcome.report["status"] == "failed"


def test_no_benchmark_option_skips_the_stage(fresh_fakes, tmp_path):
    run_pipeline(_pm(fresh_fakes, "fake_a"), "fake_a", _ctx(tmp_path, "fake_a", benchmark=False))
    assert ("fake_a", "benchmark") not in fresh_fakes.CALLS
    assert json.loads((tmp_path / "out" / "report.json").read_text())["benchmark"] is None


def test_export_only_adapter_gets_the_default_stages(fresh_fakes, tmp_path):
    pm = _pm(fresh_fakes, "export_only")
    ctx = _ctx(tmp_path, "export_only", bench_repeat=2, batch_sizes=[1, 2], sequence_lengths=[4])
    outcome = run_pipeline(pm, "export_only", ctx)
    report = outcome.report
    assert {report["stages"][s]["implementations"][0] for s in STAGE_ORDER[1:]} == {"default"}
    assert report["verify"]["reference"] == "onnxruntime:exported" and report["verify"]["passed"]
    assert (tmp_path / "out" / "optimized.onnx").is_file()
    assert [row["engine"] for row in report["benchmark"]["rows"]][:2] == ["ort:raw", "ort:tfopt"]


def test_stage_with_no_implementation_is_a_named_error(fresh_fakes, tmp_path):
    pm = _pm(fresh_fakes)
    with pytest.raises(TfoptError, match=r"stage 'export' returned nothing: .*implemented by: no plugin"):
        StageRunner(pm, None, _ctx(tmp_path, "none"))("export")


class _WrongFuse:
    @hookimpl
    def export(self, ctx):
        import tfopt_host_fakes as fakes

        return fakes.ExportOnlyAdapter([]).export(ctx)

    @hookimpl
    def fuse(self, ctx, exported):
        return {"model_path": "nope"}


class _CrashingFuse(_WrongFuse):
    @hookimpl
    def fuse(self, ctx, exported):
        raise ValueError("rule exploded\nsecond line")


def test_wrong_result_type_is_an_error_and_the_report_says_so(fresh_fakes, tmp_path):
    pm = _pm(fresh_fakes)
    register_plugin(pm, _WrongFuse(), "wrong")
    with pytest.raises(TfoptError, match=r"stage 'fuse' \(wrong, default\) returned dict, expected FuseResult"):
        run_pipeline(pm, "wrong", _ctx(tmp_path, "wrong"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "error" and "expected FuseResult" in report["error"]
    assert report["export"] is not None and report["fuse"] is None


def test_plugin_exception_becomes_one_line_with_its_cause(fresh_fakes, tmp_path):
    pm = _pm(fresh_fakes)
    register_plugin(pm, _CrashingFuse(), "crash")
    with pytest.raises(TfoptError) as info:
        run_pipeline(pm, "crash", _ctx(tmp_path, "crash"))
    message = str(info.value)
    assert message.startswith("stage 'fuse' failed in crash, default: ValueError: rule exploded")
    assert "\n" not in message and "TFOPT_TRACEBACK" in message
    assert isinstance(info.value.__cause__, ValueError)


def test_failed_export_leaves_no_output_dir_it_created(fresh_fakes, tmp_path):
    class FailingExport:
        @hookimpl
        def export(self, ctx):
            raise TfoptError("no such model: nope")

    pm = _pm(fresh_fakes)
    register_plugin(pm, FailingExport(), "failing")
    with pytest.raises(TfoptError, match="no such model"):
        run_pipeline(pm, "failing", _ctx(tmp_path, "failing"))
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_refused(fresh_fakes, tmp_path):
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(TfoptError, match="exists and is not a directory"):
        run_pipeline(_pm(fresh_fakes, "fake_a"), "fake_a", _ctx(tmp_path, "fake_a"))
    assert fresh_fakes.CALLS == []


def test_hook_export_runs_on_the_selected_adapter_only(fresh_fakes, tmp_path):
    pm = _pm(fresh_fakes, "fake_a", "fake_b")
    ctx = _ctx(tmp_path, "fake_b")
    ctx.work_dir.mkdir()
    exported = StageRunner(pm, "fake_b", ctx)("export")
    assert exported.model_path == ctx.work_dir / "exported.onnx" and exported.model_path.is_file()
    assert exported.io.inputs == {"input_ids": "int64", "attention_mask": "int64"}
    assert fresh_fakes.CALLS == [("fake_b", "export")]
    assert ctx.results["export"] is exported


def _earlier_run(out, status="passed"):
    """What an earlier fp16 run with external data left behind, next to a file of the user's."""
    out.mkdir(parents=True)
    report = {"schema_version": 1, "tfopt_version": "0", "status": status,
              "outputs": {"exported": "exported.onnx", "optimized": "optimized.onnx", "final": "optimized.fp16.onnx"}}
    (out / "report.json").write_text(json.dumps(report))
    for name in ("exported.onnx", "exported.onnx.data", "optimized.fp16.onnx", "optimized.fp16.onnx.data", "optimized.onnx.data"):
        (out / name).write_bytes(b"stale")
    (out / ".optimized.onnx.abc123").mkdir()  # an atomic write interrupted by a crash
    (out / "notes.txt").write_text("mine")


def test_a_run_removes_what_an_earlier_run_wrote_and_nothing_else(fresh_fakes, tmp_path):
    out = tmp_path / "out"
    _earlier_run(out)
    progress = []
    ctx = _ctx(tmp_path, "fake_a")
    ctx.progress = progress.append
    run_pipeline(_pm(fresh_fakes, "fake_a"), "fake_a", ctx)
    assert sorted(p.name for p in out.iterdir()) == ["exported.onnx", "notes.txt", "optimized.onnx", "report.html", "report.json"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "exported.onnx").read_bytes() != b"stale"
    assert any(line.startswith("removed the earlier run's") and "optimized.fp16.onnx" in line for line in progress)


def test_a_failed_run_leaves_no_earlier_passed_report(fresh_fakes, tmp_path):
    class FailingExport:
        @hookimpl
        def export(self, ctx):
            raise TfoptError("no such model: nope")

    pm = _pm(fresh_fakes)
    register_plugin(pm, FailingExport(), "failing")
    out = tmp_path / "out"
    _earlier_run(out)
    with pytest.raises(TfoptError, match="no such model"):
        run_pipeline(pm, "failing", _ctx(tmp_path, "failing"))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    _earlier_run(tmp_path / "again")
    with pytest.raises(TfoptError, match="unknown plugin 'gpt9'"):  # an error before any stage still clears it
        run_pipeline(pm, "gpt9", RunContext(family="gpt9", source=None, work_dir=tmp_path / "again", options={}))
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["notes.txt"]


def test_a_report_json_tfopt_did_not_write_is_refused_and_kept(fresh_fakes, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"quarterly": "numbers"}')
    with pytest.raises(TfoptError, match=r"report.json: not a tfopt report; refusing to overwrite it"):
        run_pipeline(_pm(fresh_fakes, "fake_a"), "fake_a", _ctx(tmp_path, "fake_a"))
    assert (out / "report.json").read_text() == '{"quarterly": "numbers"}' and fresh_fakes.CALLS == []
