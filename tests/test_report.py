"""report.json construction, atomic writing, reading back, and the human summary."""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import pytest

from tfopt import report as report_module
from tfopt.errors import TfoptError
from tfopt.results import (
    BenchResult,
    DiffStats,
    ExportResult,
    FuseResult,
    IOSpec,
    ModelInfo,
    PrecisionResult,
    RunContext,
    VerifyResult,
)
from tfopt.bench import latency_row


def _ctx(tmp_path: Path) -> RunContext:
    work = tmp_path / "run"
    ctx = RunContext(family="fam", source="tiny", work_dir=work, options={"precision": "fp32", "batch_sizes": (1, 2)})
    ctx.results["export"] = ExportResult(
        model_path=work / "exported.onnx",
        io=IOSpec(inputs={"input_ids": "int64"}, outputs=["y"], dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}}),
        info=ModelInfo(model_type="bert", num_heads=4, hidden_size=32, num_layers=2),
        exporter="legacy",
    )
    ctx.results["fuse"] = FuseResult(
        model_path=work / "optimized.onnx",
        op_counts={"MultiHeadAttention": 1, "SkipLayerNormalization": 4, "Softmax": 1},
        rule_counts={"Attention": 1},
        expected={"Attention|MultiHeadAttention": 2, "SkipLayerNormalization": 4},
        missing=["Attention|MultiHeadAttention: expected 2, found 1", "1 Softmax left unfused"],
    )
    ctx.results["convert_precision"] = PrecisionResult(model_path=work / "optimized.onnx", precision="fp32")
    ctx.results["verify"] = VerifyResult(
        passed=False, tolerance=1e-4, precision="fp32", reference="torch",
        overall=DiffStats(float("inf"), 1e-7, 2e-7, 3e-7, float("nan"), 2), cases=[{"batch_size": 1}],
    )
    ctx.results["benchmark"] = BenchResult(
        rows=[latency_row("torch", 1, 8, [0.004]), latency_row("ort:raw", 1, 8, [0.002]), latency_row("ort:tfopt", 1, 8, [0.001])]
    )
    ctx.results["warnings"] = ["a plugin's own warning"]
    return ctx


def _build(ctx, status="failed"):
    return report_module.build_report(
        ctx,
        adapter={"name": "fam", "distribution": "tfopt-fam", "version": "1.0"},
        extensions=["default"],
        stages={"export": {"seconds": 0.5, "implementations": ["fam"]}},
        outputs={"exported": ctx.results["export"].model_path, "optimized": None, "report": Path(ctx.work_dir) / "report.json"},
        status=status,
    )


def test_report_has_every_documented_top_level_field(tmp_path):
    report = _build(_ctx(tmp_path))
    assert list(report) == [
        "schema_version", "tfopt_version", "created_utc", "status", "error", "family", "source", "options",
        "plugins", "outputs", "stages", "export", "fuse", "convert_precision", "make_dummy_inputs", "verify",
        "benchmark", "profile", "environment", "warnings",
    ]
    assert report["schema_version"] == report_module.SCHEMA_VERSION
    assert report["profile"] is None  # not profiled
    assert report["environment"]["packages"]["onnxruntime"] == importlib.metadata.version("onnxruntime")
    assert report["environment"]["cpu_count"] == os.cpu_count()
    assert report["make_dummy_inputs"] is None  # stage never ran
    assert report["options"]["batch_sizes"] == [1, 2]


def test_every_missing_fusion_is_a_warning(tmp_path):
    warnings = _build(_ctx(tmp_path))["warnings"]
    assert warnings == [
        "expected fusion did not happen: Attention|MultiHeadAttention: expected 2, found 1",
        "expected fusion did not happen: 1 Softmax left unfused",
        "a plugin's own warning",
    ]


def test_paths_in_the_run_dir_are_relative_and_non_finite_numbers_are_strings(tmp_path):
    report = _build(_ctx(tmp_path))
    assert report["export"]["model_path"] == "exported.onnx"
    assert report["outputs"] == {"exported": "exported.onnx", "optimized": None, "report": "report.json"}
    assert report["verify"]["overall"]["max_abs"] == "inf" and report["verify"]["overall"]["max_rel"] == "nan"
    assert report["export"]["io"]["dynamic_axes"]["input_ids"] == {"0": "batch", "1": "sequence"}
    json.dumps(report, allow_nan=False)  # strict JSON


def test_write_report_is_atomic_and_readable(tmp_path):
    ctx = _ctx(tmp_path)
    path = report_module.write_report(_build(ctx), Path(ctx.work_dir) / "report.json")
    assert path == Path(ctx.work_dir) / "report.json"
    assert [p.name for p in Path(ctx.work_dir).iterdir()] == ["report.json"]
    loaded = report_module.load_report(ctx.work_dir)
    assert loaded["family"] == "fam"
    exported = report_module.export_result_from_report(loaded, ctx.work_dir)
    assert exported == ctx.results["export"]
    assert report_module.resolve_output(loaded, ctx.work_dir, "exported") == Path(ctx.work_dir) / "exported.onnx"
    assert report_module.resolve_output(loaded, ctx.work_dir, "optimized") is None


def test_write_report_refuses_non_finite_floats_that_escaped(tmp_path):
    with pytest.raises(ValueError):
        report_module.write_report({"x": float("nan")}, tmp_path / "report.json")
    assert list(tmp_path.iterdir()) == []  # the temp file is gone too


def test_load_report_errors_are_one_line(tmp_path):
    with pytest.raises(TfoptError, match="no report.json here"):
        report_module.load_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(TfoptError, match="not a tfopt report"):
        report_module.load_report(tmp_path)
    (tmp_path / "report.json").write_text('{"schema_version": 99}')
    with pytest.raises(TfoptError, match="schema version 1"):
        report_module.load_report(tmp_path)


def test_summary_shows_fusions_parity_latency_and_warnings(tmp_path):
    text = report_module.summary_text(_build(_ctx(tmp_path)), run_dir="out")
    lines = text.splitlines()
    assert lines[0] == "tfopt FAILED: fam on tiny (fp32)"
    row = next(line for line in lines if line.strip().startswith("Attention|MultiHeadAttention"))
    assert row.split() == ["Attention|MultiHeadAttention", "1", "2", "MISSING"]
    assert any(line.split() == ["SkipLayerNormalization", "4", "4", "ok"] for line in lines)
    parity = next(line for line in lines if line.startswith("parity vs torch"))
    assert "max abs inf" in parity and "NaN 2" in parity and parity.endswith("FAIL")
    latency = next(line for line in lines if line.strip().startswith("1 x 8"))
    assert latency.split() == ["1", "x", "8", "4.000", "2.000", "1.000", "0.50x", "0.25x"]
    assert "warning: expected fusion did not happen: 1 Softmax left unfused" in lines
    assert lines[-1] == "files in out: exported.onnx, report.json"


def test_summary_without_expectations_lists_fused_ops(tmp_path):
    ctx = _ctx(tmp_path)
    ctx.results["fuse"].expected = {}
    text = report_module.summary_text(_build(ctx))
    assert "fused ops:" in text and "MultiHeadAttention" in text and "Softmax" not in text.split("parity")[0]


def test_summary_files_line_names_the_page_written_beside_the_report(tmp_path):
    """report.html is written by every run, though report.json's outputs do not list it."""
    (tmp_path / "report.html").write_text("<html></html>")
    text = report_module.summary_text(_build(_ctx(tmp_path)), run_dir=tmp_path)
    assert text.splitlines()[-1] == f"files in {tmp_path}: exported.onnx, report.json, report.html"


def test_summary_says_how_the_precision_was_reached(tmp_path):
    """The converter's notes (quantizer, rounding, what stayed fp32) follow the converted model's line."""
    ctx = _ctx(tmp_path)
    notes = ["weight-only int4: MatMulNBits, blocks of 32 along K", "weights rounded by GPTQ, calibrated on 64 activation rows"]
    ctx.results["convert_precision"] = PrecisionResult(model_path=Path(ctx.work_dir) / "optimized.int4.onnx", precision="int4", notes=notes)
    lines = report_module.summary_text(_build(ctx)).splitlines()
    assert [line for line in lines if line.startswith("  weight")] == [f"  {note}" for note in notes]
    ctx.results["convert_precision"].notes = []
    assert not any("GPTQ" in line for line in report_module.summary_text(_build(ctx)).splitlines())
