"""The adapter as the host sees it: entry point, registration, and the verify/benchmark hooks."""

from __future__ import annotations

from importlib.metadata import entry_points

import numpy as np
import onnx
import pluggy
import pytest
from onnx import helper, numpy_helper

import tfopt.hookspecs
import tfopt_bert_pt
from bert_pt_cases import make_ctx
from tfopt.errors import TfoptError
from tfopt.graph import fuse_file


@pytest.fixture
def plugin_manager():
    manager = pluggy.PluginManager("tfopt")
    manager.add_hookspecs(tfopt.hookspecs)
    manager.register(tfopt_bert_pt, name="bert_pt")
    return manager


def test_entry_point_names_the_package():
    (entry,) = [ep for ep in entry_points(group="tfopt") if ep.name == "bert_pt"]
    assert entry.value == "tfopt_bert_pt" and entry.load() is tfopt_bert_pt


def test_registers_its_four_hooks(plugin_manager):
    import tfopt_bert_pt.export  # noqa: F401  (rebinds the package's `export` attribute to the submodule)

    again = pluggy.PluginManager("tfopt")
    again.add_hookspecs(tfopt.hookspecs)
    again.register(tfopt_bert_pt, name="bert_pt")
    for manager in (plugin_manager, again):
        hooks = {caller.name for caller in manager.get_hookcallers(tfopt_bert_pt)}
        assert hooks == {"export", "make_dummy_inputs", "verify", "benchmark"}


def _add_to_output(source_path, target_path, offset: float) -> None:
    """A copy of the model whose output is shifted by ``offset``: what a subtly wrong fusion looks like."""
    model = onnx.load(str(source_path))
    output = model.graph.output[0]
    inner = output.name + "_before_shift"
    for node in model.graph.node:
        node.output[:] = [inner if name == output.name else name for name in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(offset, dtype=np.float32), "shift"))
    model.graph.node.append(helper.make_node("Add", [inner, "shift"], [output.name]))
    onnx.save(model, str(target_path))


def test_run_through_the_hooks(plugin_manager, tmp_path):
    """export -> dummy inputs -> verify (raw, fused, broken) -> benchmark, as the host calls them."""
    progress = []
    ctx = make_ctx(tmp_path, "tiny-bert", batch_sizes=[1, 3], sequence_lengths=[8, 13], bench_repeat=3)
    ctx.progress = progress.append
    hook = plugin_manager.hook
    exported = hook.export(ctx=ctx)
    assert exported.model_path.is_file() and any("exporting tiny-bert" in line for line in progress)
    inputs = hook.make_dummy_inputs(ctx=ctx, exported=exported)
    assert len(inputs) == 4

    raw = hook.verify(ctx=ctx, exported=exported, model_path=exported.model_path, inputs=inputs)
    assert raw.passed and raw.reference == "torch" and raw.precision == "fp32" and raw.tolerance == 1e-4
    assert raw.overall.max_abs <= 1e-4 and raw.overall.nan_count == 0
    assert [(c["batch_size"], c["sequence_length"]) for c in raw.cases] == [(1, 8), (1, 13), (3, 8), (3, 13)]

    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info)
    assert not fused.missing
    assert hook.verify(ctx=ctx, exported=exported, model_path=fused.model_path, inputs=inputs).passed

    broken = tmp_path / "broken.onnx"
    _add_to_output(exported.model_path, broken, 1e-3)
    failed = hook.verify(ctx=ctx, exported=exported, model_path=broken, inputs=inputs)
    assert not failed.passed and 9e-4 < failed.overall.max_abs < 1.1e-3

    bench = hook.benchmark(ctx=ctx, exported=exported, models={"ort:raw": exported.model_path, "ort:tfopt": fused.model_path})
    grid = [(1, 8), (1, 32)]  # the tiny default: batch 1, sequences 8 and 32
    assert [(r.engine, r.batch_size, r.sequence_length) for r in bench.rows] == [
        (engine, b, s) for b, s in grid for engine in ("torch", "ort:raw", "ort:tfopt")
    ]
    for row in bench.rows:
        assert 0 < row.p50_ms <= row.p90_ms <= row.p95_ms <= row.p99_ms
        assert row.throughput == pytest.approx(row.batch_size / (row.p50_ms / 1000))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # percentiles of inf diffs
def test_verify_counts_nans_and_ignores_padding(tmp_path, exported_variant):
    ctx, exported = exported_variant("tiny-distilbert", "legacy", "eager")
    inputs = tfopt_bert_pt.hooks.make_dummy_inputs_hook(make_ctx(tmp_path, "tiny-distilbert", batch_sizes=[2], sequence_lengths=[6]), exported)
    nan_model = tmp_path / "nan.onnx"
    _add_to_output(exported.model_path, nan_model, float("nan"))
    result = tfopt_bert_pt.hooks.verify_hook(ctx, exported, nan_model, inputs)
    valid_values = int(inputs[0]["attention_mask"].sum()) * exported.info.hidden_size
    assert not result.passed and result.overall.nan_count == valid_values  # padded positions not counted


def test_benchmark_grid_options(tmp_path, exported_variant):
    _, exported = exported_variant("tiny-albert", "legacy", "sdpa")
    ctx = make_ctx(tmp_path, "tiny-albert", attn_implementation="sdpa", bench_batch_sizes=[2], bench_sequence_lengths=[4, 16], bench_repeat=2)
    rows = tfopt_bert_pt.hooks.benchmark_hook(ctx, exported, {"ort:raw": exported.model_path}).rows
    assert [(r.engine, r.batch_size, r.sequence_length) for r in rows] == [
        ("torch", 2, 4), ("ort:raw", 2, 4), ("torch", 2, 16), ("ort:raw", 2, 16)
    ]


def test_verify_unreadable_model_is_one_line_error(tmp_path, exported_variant):
    ctx, exported = exported_variant("tiny-bert", "legacy", "sdpa")
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(exported.model_path.read_bytes()[:1000])
    with pytest.raises(TfoptError, match="ONNX Runtime cannot load it") as error:
        tfopt_bert_pt.hooks.verify_hook(ctx, exported, bad, [])
    assert "\n" not in str(error.value)


def test_model_is_loaded_once_per_run(tmp_path, monkeypatch):
    from tfopt_bert_pt import cache

    calls = []
    real_load = cache.load_source
    monkeypatch.setattr(cache, "load_source", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    ctx = make_ctx(tmp_path, "tiny-bert", exporter="legacy")
    first = cache.source_model(ctx)
    assert cache.source_model(ctx) is first and len(calls) == 1
    assert cache.source_model(make_ctx(tmp_path, "tiny-bert")) is not first  # another run, another model
    ctx.options["attn_implementation"] = "eager"
    assert cache.source_model(ctx).model.config._attn_implementation == "eager" and len(calls) == 3
