"""The built-in generic stages (plugin ``default``), each on a tiny hand-built graph."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt import default_plugin
from tfopt.errors import TfoptError
from tfopt.feeds import graph_inputs
from tfopt.pipeline import export_result_from_file
from tfopt.plugins import build_plugin_manager, generic_caller
from tfopt.results import BenchResult, ExportResult, FuseResult, ModelInfo, PrecisionResult, VerifyResult

import tfopt_host_fakes as fakes

H = 8


def _exported(tmp_path: Path, model: onnx.ModelProto | None = None, model_type: str = "custom") -> ExportResult:
    path = tmp_path / "exported.onnx"
    onnx.save(model or fakes.tiny_model(), path)
    result = export_result_from_file(path)
    result.info = ModelInfo(model_type=model_type)
    return result


def _decomposed_layer_norm() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["norm"]),
        helper.make_node("Mul", ["norm", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), "beta"),
    ]
    graph = helper.make_graph(
        nodes, "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", H])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", H])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_hook_fuse_default_runs_the_fusion_toolkit(tmp_path, run_context):
    ctx = run_context("custom")
    exported = _exported(tmp_path, _decomposed_layer_norm())
    fused = default_plugin.fuse(ctx=ctx, exported=exported)
    assert isinstance(fused, FuseResult)
    assert fused.model_path == ctx.work_dir / "optimized.onnx" and fused.model_path.is_file()
    assert fused.op_counts == {"LayerNormalization": 1}
    assert fused.rule_counts["DecomposedLayerNorm"] == 1
    assert exported.model_path.read_bytes() == onnx.load(exported.model_path).SerializeToString()  # input untouched


def test_hook_fuse_default_honours_disabled_fusions(tmp_path, run_context):
    ctx = run_context("custom", disabled=["layer_norm"])
    fused = default_plugin.fuse(ctx=ctx, exported=_exported(tmp_path, _decomposed_layer_norm()))
    assert "LayerNormalization" not in fused.op_counts and fused.op_counts["ReduceMean"] == 2


def test_hook_convert_precision_fp32_is_the_fused_model(tmp_path, run_context):
    fused = FuseResult(tmp_path / "optimized.onnx", {}, {}, {}, [])
    result = default_plugin.convert_precision(ctx=run_context(), fused=fused)
    assert result == PrecisionResult(model_path=fused.model_path, precision="fp32")


@pytest.mark.parametrize("precision, marker_op", [("fp16", None), ("int8", "MatMulInteger")])
def test_hook_convert_precision_writes_a_converted_copy(tmp_path, run_context, precision, marker_op):
    models = tmp_path / "models"
    models.mkdir()
    source = models / "optimized.onnx"
    onnx.save(fakes.tiny_model(), source)
    before = source.read_bytes()
    result = default_plugin.convert_precision(ctx=run_context(precision=precision), fused=FuseResult(source, {}, {}, {}, []))
    assert result.precision == precision and result.model_path == models / f"optimized.{precision}.onnx"
    assert source.read_bytes() == before
    model = onnx.load(result.model_path)
    if marker_op:
        assert marker_op in {node.op_type for node in model.graph.node}
    else:
        assert {init.name: init.data_type for init in model.graph.initializer}["weight"] == TensorProto.FLOAT16
    assert sorted(p.name for p in models.iterdir()) == sorted(["optimized.onnx", result.model_path.name])  # no temp files left


def test_hook_convert_precision_unknown_is_an_error(tmp_path, run_context):
    with pytest.raises(TfoptError, match="unknown precision 'bf8'; known: fp32, fp16, bf16, int8, int4"):
        default_plugin.convert_precision(ctx=run_context(precision="bf8"), fused=FuseResult(tmp_path / "m.onnx", {}, {}, {}, []))


def test_hook_make_dummy_inputs_default_grid_with_padding(tmp_path, run_context):
    feeds = default_plugin.make_dummy_inputs(ctx=run_context(), exported=_exported(tmp_path))
    assert [feed["input_ids"].shape for feed in feeds] == [(b, s) for b in (1, 2, 4) for s in (8, 16, 32)]
    assert all(feed["input_ids"].dtype == np.int64 for feed in feeds)
    assert max(feed["input_ids"].max() for feed in feeds) < fakes.VOCAB  # the embedding table was found
    mask = feeds[-1]["attention_mask"]
    assert mask.sum(axis=1).tolist() == [32, 24, 16, 8]  # varied right padding
    assert all(row[: n].all() and not row[n:].any() for row, n in zip(mask, mask.sum(axis=1)))


def test_hook_make_dummy_inputs_takes_the_grid_from_options(tmp_path, run_context):
    ctx = run_context(batch_sizes="2", sequence_lengths=[5, 7])
    feeds = default_plugin.make_dummy_inputs(ctx=ctx, exported=_exported(tmp_path))
    assert [feed["attention_mask"].shape for feed in feeds] == [(2, 5), (2, 7)]
    with pytest.raises(TfoptError, match="batch_sizes must be positive integers"):
        default_plugin.make_dummy_inputs(ctx=run_context(batch_sizes=[0]), exported=_exported(tmp_path))


def test_hook_make_dummy_inputs_float_inputs_use_static_dims(tmp_path, run_context):
    feeds = default_plugin.make_dummy_inputs(
        ctx=run_context(batch_sizes=[3], sequence_lengths=[4]), exported=_exported(tmp_path, _decomposed_layer_norm())
    )
    assert feeds[0]["x"].shape == (3, 4, H) and feeds[0]["x"].dtype == np.float32 and feeds[0]["x"].std() > 0.5


def test_hook_verify_default_compares_with_the_exported_model(tmp_path, run_context):
    exported = _exported(tmp_path)
    same = tmp_path / "same.onnx"
    onnx.save(fakes.tiny_model(), same)
    inputs = fakes.tiny_feeds()
    result = default_plugin.verify(ctx=run_context(), exported=exported, model_path=same, inputs=inputs)
    assert isinstance(result, VerifyResult) and result.passed
    assert result.reference == "onnxruntime:exported" and result.overall.max_abs == 0.0
    assert [case["batch_size"] for case in result.cases] == [1, 2]

    different = tmp_path / "different.onnx"
    onnx.save(fakes.tiny_model(weight_offset=0.01), different)
    result = default_plugin.verify(ctx=run_context(), exported=exported, model_path=different, inputs=inputs)
    assert not result.passed and result.overall.max_abs > 1e-4
    loose = default_plugin.verify(ctx=run_context(tolerance=1.0), exported=exported, model_path=different, inputs=inputs)
    assert loose.passed and loose.tolerance == 1.0


def test_hook_verify_default_unloadable_model_is_one_line(tmp_path, run_context):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x01garbage")
    with pytest.raises(TfoptError, match="ONNX Runtime cannot load it") as info:
        default_plugin.verify(ctx=run_context(), exported=_exported(tmp_path), model_path=broken, inputs=fakes.tiny_feeds())
    assert "\n" not in str(info.value)


def test_valid_positions_only_when_the_output_is_laid_out_like_the_mask():
    mask = np.ones((2, 3), dtype=np.int64)
    assert default_plugin._valid_positions({"attention_mask": mask}, np.zeros((2, 3, 4))) is mask
    assert default_plugin._valid_positions({"attention_mask": mask}, np.zeros((2, 4))) is None
    assert default_plugin._valid_positions({}, np.zeros((2, 3, 4))) is None


def test_hook_benchmark_default_times_every_model(tmp_path, run_context):
    exported = _exported(tmp_path)
    ctx = run_context(bench_repeat=2, bench_warmup=0, bench_batch_sizes=[1, 2], bench_sequence_lengths="4")
    progress = []
    ctx.progress = progress.append
    result = default_plugin.benchmark(ctx=ctx, exported=exported, models={"ort:raw": exported.model_path, "ort:copy": exported.model_path})
    assert isinstance(result, BenchResult)
    assert [(r.engine, r.batch_size, r.sequence_length) for r in result.rows] == [
        ("ort:raw", 1, 4), ("ort:copy", 1, 4), ("ort:raw", 2, 4), ("ort:copy", 2, 4)
    ]
    assert all(r.p50_ms > 0 and r.throughput > 0 for r in result.rows)
    assert progress == ["benchmarking batch 1, sequence 4 ...", "benchmarking batch 2, sequence 4 ..."]


def test_default_plugin_hooks_are_all_trylast():
    pm = build_plugin_manager(entry_points=[])
    for hook in ("fuse", "convert_precision", "make_dummy_inputs", "verify", "benchmark"):
        (impl,) = generic_caller(pm, hook).get_hookimpls()
        assert impl.plugin_name == "default" and impl.trylast, hook


def test_graph_inputs_skip_initializers_listed_as_inputs(tmp_path):
    model = fakes.tiny_model()
    model.graph.input.append(helper.make_tensor_value_info("weight", TensorProto.FLOAT, [fakes.WIDTH, fakes.WIDTH]))
    path = tmp_path / "old_style.onnx"
    onnx.save(model, path)
    assert [spec.name for spec in graph_inputs(path)] == ["input_ids", "attention_mask"]


def test_graph_inputs_parse_a_settled_file_once_and_a_rewritten_one_again(tmp_path, monkeypatch):
    """Several stages of a run read the exported file's inputs; an unchanged file is parsed once."""
    path = tmp_path / "model.onnx"
    onnx.save(fakes.tiny_model(), path)
    loads = []
    real_load = onnx.load
    monkeypatch.setattr(onnx, "load", lambda *args, **kwargs: loads.append(args[0]) or real_load(*args, **kwargs))
    fresh = time.time_ns() + 60 * 10**9  # "just written", however slowly this test runs
    os.utime(path, ns=(fresh, fresh))
    for _ in range(2):
        assert [spec.name for spec in graph_inputs(path)] == ["input_ids", "attention_mask"]
    assert len(loads) == 2  # just written: read each time, as a rewrite this instant could keep its mtime and size
    settled = time.time_ns() - 10**10
    os.utime(path, ns=(settled, settled))
    first = graph_inputs(path)
    first[0].dims[0] = 99  # each caller gets its own copy
    assert graph_inputs(path)[0].dims == [None, None] and len(loads) == 3
    onnx.save(_decomposed_layer_norm(), path)
    os.utime(path, ns=(settled, settled))
    assert [spec.name for spec in graph_inputs(path)] == ["x"] and len(loads) == 4
    os.utime(path, ns=(settled + 1, settled + 1))
    assert [spec.name for spec in graph_inputs(path)] == ["x"] and len(loads) == 5
    path.unlink()
    with pytest.raises(TfoptError, match=r"model.onnx: not a readable ONNX model"):
        graph_inputs(path)


def test_axis_sizes_from_the_adapter_and_from_options_are_checked_alike(tmp_path, run_context):
    exported = _exported(tmp_path)
    exported.info = ModelInfo(model_type="custom", axis_sizes={"sequence": [4, 6]})
    assert default_plugin.run_axis_sizes(run_context(), exported) == {"sequence": (4, 6)}
    assert default_plugin.run_axis_sizes(run_context(axis_sizes={"sequence": "5"}), exported) == {"sequence": (5,)}
    assert default_plugin.run_axis_sizes(run_context(axis_sizes={"sequence": [5]}), None) == {"sequence": (5,)}
    assert default_plugin.run_axis_sizes(run_context(axis_sizes={}), None) is None
    with pytest.raises(TfoptError, match=r"""^axis_sizes must map axis names to sizes, e\.g\. --option 'axis_sizes=\{"samples": \[400, 800\]\}', got 'sequence=5'$"""):
        default_plugin.run_axis_sizes(run_context(axis_sizes="sequence=5"), exported)
    with pytest.raises(TfoptError, match=r"^axis_sizes\[sequence\] must be positive integers, got \[0\]$"):
        default_plugin.run_axis_sizes(run_context(axis_sizes={"sequence": [0]}), exported)
    exported.info.axis_sizes = ["sequence"]
    with pytest.raises(TfoptError, match=r"""^ModelInfo\.axis_sizes must map axis names to sizes, e\.g\. \{"samples": \[400, 800\]\}, got \['sequence'\]$"""):
        default_plugin.run_axis_sizes(run_context(), exported)
    ctx = run_context(bench_axis_sizes={"sequence": [-1]}, bench_repeat=1, bench_warmup=0)
    with pytest.raises(TfoptError, match=r"^bench_axis_sizes\[sequence\] must be positive integers"):
        default_plugin.benchmark(ctx, _exported(tmp_path), {"ort:raw": tmp_path / "exported.onnx"})
