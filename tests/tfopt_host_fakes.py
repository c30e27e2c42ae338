"""Cheap stand-ins for real plugins: two adapters on a tiny hand-built graph, an export-only
adapter (and one that declares options), and a wrapper extension that times every stage.

Entry points in tests point at the module attributes ``ADAPTER_A``, ``ADAPTER_B``,
``EXPORT_ONLY``, ``WITH_OPTIONS`` and ``TIMER``; the ``fresh_fakes`` fixture replaces them per test.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tfopt import PluginOption, hookimpl
from tfopt.bench import latency_row, ort_session, time_calls
from tfopt.feeds import session_feed
from tfopt.results import (
    BenchResult,
    ExportResult,
    FuseResult,
    IOSpec,
    ModelInfo,
    PrecisionResult,
    RunContext,
)
from tfopt.verify import compare_cases

VOCAB, WIDTH = 16, 4
INPUT_NAMES = ("input_ids", "attention_mask")


def tiny_model(weight_offset: float = 0.0, seed: int = 0) -> onnx.ModelProto:
    """y = (Embedding[input_ids] @ W + b) * attention_mask[..., None]; MatMul + Add at its core."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((VOCAB, WIDTH)).astype(np.float32)
    weight = (rng.standard_normal((WIDTH, WIDTH)) + weight_offset).astype(np.float32)
    bias = rng.standard_normal(WIDTH).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["embedded"]),
        helper.make_node("MatMul", ["embedded", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["biased"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_float", "last_axis"], ["mask_3d"]),
        helper.make_node("Mul", ["biased", "mask_3d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", WIDTH])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def tiny_feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    feeds = []
    for batch, seq in ((1, 4), (2, 6)):
        lengths = seq - np.arange(batch) * (seq // 2)
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        feeds.append({"input_ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int64), "attention_mask": mask})
    return feeds


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node))


class FakeAdapter:
    """Implements all six hooks cheaply; ``calls`` records (adapter, hook) in a shared log.

    ``fused_weight_offset`` perturbs the "optimized" model so verification fails;
    ``fused_missing`` is what its fuse result says fell short (a run with it ends "incomplete").
    """

    fused_missing: tuple[str, ...] = ()

    def __init__(self, name: str, log: list, *, fused_weight_offset: float = 0.0):
        self.name = name
        self.log = log
        self.fused_weight_offset = fused_weight_offset

    def _called(self, hook: str) -> None:
        self.log.append((self.name, hook))

    @hookimpl
    def export(self, ctx: RunContext) -> ExportResult:
        self._called("export")
        path = Path(ctx.work_dir) / "exported.onnx"
        onnx.save(tiny_model(), path)
        return ExportResult(
            model_path=path,
            io=IOSpec(inputs={name: "int64" for name in INPUT_NAMES}, outputs=["y"]),
            info=ModelInfo(model_type="tiny"),
            exporter="hand-built",
        )

    @hookimpl
    def fuse(self, ctx: RunContext, exported: ExportResult) -> FuseResult:
        self._called("fuse")
        path = Path(ctx.work_dir) / "optimized.onnx"
        model = tiny_model(self.fused_weight_offset)
        onnx.save(model, path)
        return FuseResult(
            model_path=path,
            op_counts=op_counts(model),
            rule_counts={"NothingToFuse": 0},
            expected={"MatMul": 1},
            missing=list(self.fused_missing),
        )

    @hookimpl
    def convert_precision(self, ctx: RunContext, fused: FuseResult) -> PrecisionResult:
        self._called("convert_precision")
        return PrecisionResult(model_path=fused.model_path, precision=ctx.option("precision", "fp32"))

    @hookimpl
    def make_dummy_inputs(self, ctx: RunContext, exported: ExportResult):
        self._called("make_dummy_inputs")
        return tiny_feeds()

    @hookimpl
    def verify(self, ctx, exported, model_path, inputs):
        self._called("verify")
        reference, candidate = ort_session(exported.model_path), ort_session(model_path)
        expected = [reference.run(None, session_feed(reference, feed))[0] for feed in inputs]
        actual = [candidate.run(None, session_feed(candidate, feed))[0] for feed in inputs]
        return compare_cases(expected, actual, valids=[feed["attention_mask"] for feed in inputs], reference_name="fake")

    @hookimpl
    def benchmark(self, ctx, exported, models):
        self._called("benchmark")
        feed = tiny_feeds()[0]
        rows = []
        for label, path in models.items():
            session = ort_session(path)
            seconds = time_calls(lambda: session.run(None, feed), warmup=1, repeat=3)
            rows.append(latency_row(label, 1, 4, seconds))
        return BenchResult(rows=rows)


class ExportOnlyAdapter:
    """An adapter that only exports: every other stage comes from the built-in default plugin."""

    def __init__(self, log: list):
        self.log = log

    @hookimpl
    def export(self, ctx: RunContext) -> ExportResult:
        self.log.append(("export_only", "export"))
        path = Path(ctx.work_dir) / "exported.onnx"
        onnx.save(tiny_model(), path)
        return ExportResult(
            model_path=path,
            io=IOSpec(inputs={name: "int64" for name in INPUT_NAMES}, outputs=["y"]),
            info=ModelInfo(model_type="tiny", expected={}),  # nothing to fuse, and it says so
        )


class StageTimer:
    """An extension: a ``wrapper=True`` hookimpl around every stage, whichever adapter runs it."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.order: list[str] = []
        self.families: set[str] = set()

    def _timed(self, hook: str, ctx):
        start = time.perf_counter()
        result = yield
        self.seconds[hook] = time.perf_counter() - start
        self.order.append(hook)
        self.families.add(ctx.family)
        return result

    @hookimpl(wrapper=True)
    def export(self, ctx):
        return (yield from self._timed("export", ctx))

    @hookimpl(wrapper=True)
    def fuse(self, ctx):
        return (yield from self._timed("fuse", ctx))

    @hookimpl(wrapper=True)
    def convert_precision(self, ctx):
        return (yield from self._timed("convert_precision", ctx))

    @hookimpl(wrapper=True)
    def make_dummy_inputs(self, ctx):
        return (yield from self._timed("make_dummy_inputs", ctx))

    @hookimpl(wrapper=True)
    def verify(self, ctx):
        return (yield from self._timed("verify", ctx))

    @hookimpl(wrapper=True)
    def benchmark(self, ctx):
        return (yield from self._timed("benchmark", ctx))


class OptionsAdapter(ExportOnlyAdapter):
    """An export-only adapter that declares options of each type (flags of `tfopt run --plugin with_options`)."""

    tfopt_options = (
        PluginOption("data", str, None, "A data file.", metavar="FILE"),
        PluginOption("epochs", int, 2, "Training epochs."),
        PluginOption("rate", float, 0.5, "A rate."),
        PluginOption("shuffle", bool, True, "Shuffle the data."),
        PluginOption("lengths", list[int], (4, 8), "Some lengths."),
        PluginOption("mode", str, "fast", "How.", choices=("fast", "exact")),
    )


CALLS: list = []
ADAPTER_A = FakeAdapter("fake_a", CALLS)
ADAPTER_B = FakeAdapter("fake_b", CALLS)
EXPORT_ONLY = ExportOnlyAdapter(CALLS)
WITH_OPTIONS = OptionsAdapter(CALLS)
TIMER = StageTimer()


def entry_point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group="tfopt")


FAKE_ENTRY_POINTS = {
    "fake_a": "tfopt_host_fakes:ADAPTER_A",
    "fake_b": "tfopt_host_fakes:ADAPTER_B",
    "export_only": "tfopt_host_fakes:EXPORT_ONLY",
    "with_options": "tfopt_host_fakes:WITH_OPTIONS",
    "timer": "tfopt_host_fakes:TIMER",
    "broken": "tfopt_host_fakes_broken",
}
