"""The built-in generic stages, registered as the plugin ``default`` in every run.

Every hookimpl is ``trylast=True``: an adapter that implements the same hook runs
first and wins (the hooks are firstresult), so a family overrides only what differs.
There is no generic ``export``: exporting is what makes a plugin an adapter.

- ``fuse``: the shared fusion toolkit (:func:`tfopt.graph.fuse_file`).
- ``convert_precision``: fp32 as is, fp16/int8 via :mod:`tfopt.precision`.
- ``make_dummy_inputs``: feeds read off the exported graph's inputs (:mod:`tfopt.feeds`).
- ``verify``: ONNX Runtime on the exported (unfused) model is the reference, output 0.
- ``benchmark``: ONNX Runtime latency of each model.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from . import feeds as feeds_module
from . import precision as precision_module
from .bench import latency_row, ort_session, time_calls
from .hookspecs import hookimpl
from .results import BenchResult, ExportResult, FuseResult, PrecisionResult, RunContext, VerifyResult
from .verify import compare_cases

OPTIMIZED_FILE = "optimized.onnx"
DEFAULT_BENCH_BATCH_SIZES = (1,)
DEFAULT_BENCH_SEQUENCE_LENGTHS = (8, 32)
DEFAULT_BENCH_REPEAT = 20  # timed calls per engine and shape
DEFAULT_BENCH_WARMUP = 3  # untimed calls first


@hookimpl(trylast=True)
def fuse(ctx: RunContext, exported: ExportResult) -> FuseResult:
    from .graph import fuse_file

    ctx.progress(f"fusing {Path(exported.model_path).name} ...")
    return fuse_file(
        exported.model_path,
        Path(ctx.work_dir) / OPTIMIZED_FILE,
        dataclasses.replace(exported.info, axis_sizes=run_axis_sizes(ctx, exported)),
        disabled=_names(ctx.option("disabled", ())),
        input_int32=bool(ctx.option("input_int32", False)),
        target=ctx.option("target", "cpu"),
        cpu_layer_norm=bool(ctx.option("cpu_layer_norm", False)),
        validate=bool(ctx.option("validate", True)),
        progress=ctx.progress,
    )


def _names(value) -> list[str]:
    """A list of names from an option: ["a", "b"], or "a,b" as ``--option disabled=a,b`` may leave it."""
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else list(value)


@hookimpl(trylast=True)
def convert_precision(ctx: RunContext, fused: FuseResult) -> PrecisionResult:
    precision = ctx.option("precision", "fp32")
    if precision != "fp32":
        ctx.progress(f"converting to {precision} ...")
    converted = precision_module.convert(fused.model_path, precision)
    if precision != "fp32" and ctx.option("validate", True):
        from .graph.validate import validate_written

        sizes = run_axis_sizes(ctx, ctx.results.get("export"))
        checked = converted.emulation_path or converted.model_path  # bf16: its CPU emulation
        converted.validation = validate_written(checked, fused.model_path, precision, axis_sizes=sizes)
    return converted


@hookimpl(trylast=True)
def make_dummy_inputs(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    specs = feeds_module.graph_inputs(exported.model_path)
    sizes = run_axis_sizes(ctx, exported)
    feeds_module.check_sequence_option(specs, ctx.option("sequence_lengths"), "sequence_lengths", sized=sizes)
    return feeds_module.dummy_feeds(
        exported.model_path,
        batch_sizes=feeds_module.int_tuple(ctx.option("batch_sizes", feeds_module.DEFAULT_BATCH_SIZES), "batch_sizes"),
        sequence_lengths=feeds_module.int_tuple(
            ctx.option("sequence_lengths", feeds_module.DEFAULT_SEQUENCE_LENGTHS), "sequence_lengths"
        ),
        id_limit=int(ctx.option("id_limit", feeds_module.DEFAULT_ID_LIMIT)),
        axis_sizes=sizes,
    )


def run_axis_sizes(ctx: RunContext, exported: ExportResult | None) -> dict[str, tuple[int, ...]] | None:
    """The run's named-axis sizes: the adapter's ``ModelInfo.axis_sizes`` (none without an export), each
    overridden by ``--option axis_sizes``."""
    stated = feeds_module.axis_sizes_from(exported.info.axis_sizes if exported is not None else None, "ModelInfo.axis_sizes")
    merged = {**(stated or {}), **(feeds_module.axis_sizes_from(ctx.option("axis_sizes"), "axis_sizes") or {})}
    return merged or None


def sequence_size(shape: dict[str, int]) -> int:
    """``LatencyRow.sequence_length`` of a shape: its "sequence" axis, or its one axis besides the batch; else 0."""
    others = [size for axis, size in shape.items() if axis != "batch"]
    return shape.get("sequence", others[0] if len(others) == 1 else 0)


def case_label(shape: dict[str, int]) -> dict[str, int]:
    """A verification case's label from its feed shape: ``batch_size``, ``sequence_length``, other axes by name."""
    names = {"batch": "batch_size", "sequence": "sequence_length"}
    return {names.get(axis, axis): size for axis, size in shape.items()}


def _valid_positions(feed: dict[str, np.ndarray], output: np.ndarray) -> np.ndarray | None:
    """The attention mask, when the output is laid out (batch, sequence, ...) like it."""
    mask = feed.get("attention_mask")
    if mask is None or mask.ndim != 2 or output.shape[:2] != mask.shape:
        return None
    return mask


@hookimpl(trylast=True)
def verify(
    ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]
) -> VerifyResult:
    start = time.perf_counter()
    specs = feeds_module.graph_inputs(exported.model_path)
    reference = ort_session(exported.model_path)
    candidate = ort_session(model_path)
    output_name = reference.get_outputs()[0].name
    candidate_names = [output.name for output in candidate.get_outputs()]
    candidate_name = output_name if output_name in candidate_names else candidate_names[0]
    ctx.progress(f"verifying {Path(model_path).name} against the exported model on {len(inputs)} input shapes ...")
    references, actuals, valids, labels = [], [], [], []
    for feed in inputs:
        expected = feeds_module.run_generated(reference, feed, [output_name], specs=specs)[0]
        actual = feeds_module.run_generated(candidate, feed, [candidate_name], specs=specs)[0]
        references.append(expected)
        actuals.append(actual)
        valids.append(_valid_positions(feed, expected))
        labels.append(case_label(feeds_module.feed_shape(specs, feed)))
    result = compare_cases(
        references,
        actuals,
        valids=valids,
        labels=labels,
        precision=ctx.option("precision", "fp32"),
        reference_name="onnxruntime:exported",
        tolerance=ctx.option("tolerance"),
    )
    result.seconds = time.perf_counter() - start
    return result


@hookimpl(trylast=True)
def benchmark(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    start = time.perf_counter()
    specs = feeds_module.graph_inputs(exported.model_path)
    # Named axes, axis by axis: --option bench_axis_sizes over the run's (ModelInfo.axis_sizes, --option axis_sizes).
    bench_option = feeds_module.axis_sizes_from(ctx.option("bench_axis_sizes"), "bench_axis_sizes")
    bench_sizes = {**(run_axis_sizes(ctx, exported) or {}), **(bench_option or {})} or None
    feeds_module.check_sequence_option(specs, ctx.option("bench_sequence_lengths"), "bench_sequence_lengths", sized=bench_sizes)
    batch_sizes = feeds_module.int_tuple(ctx.option("bench_batch_sizes", DEFAULT_BENCH_BATCH_SIZES), "bench_batch_sizes")
    sequence_lengths = feeds_module.int_tuple(
        ctx.option("bench_sequence_lengths", DEFAULT_BENCH_SEQUENCE_LENGTHS), "bench_sequence_lengths"
    )
    repeat = int(ctx.option("bench_repeat", DEFAULT_BENCH_REPEAT))
    warmup = int(ctx.option("bench_warmup", DEFAULT_BENCH_WARMUP))
    sessions = {label: ort_session(path) for label, path in models.items()}
    grid = feeds_module.dummy_feeds(
        exported.model_path,
        batch_sizes=batch_sizes,
        sequence_lengths=sequence_lengths,
        id_limit=int(ctx.option("id_limit", feeds_module.DEFAULT_ID_LIMIT)),
        padded=False,
        axis_sizes=bench_sizes,
    )
    rows = []
    for feed in grid:
        shape = feeds_module.feed_shape(specs, feed)
        ctx.progress(f"benchmarking {', '.join(f'{axis} {size}' for axis, size in shape.items())} ...")
        for label, session in sessions.items():
            feeds_module.run_generated(session, feed, specs=specs, axis_option="bench_axis_sizes")  # a feed the model cannot take: a one-line error
            prepared = feeds_module.session_feed(session, feed)
            seconds = time_calls(lambda: session.run(None, prepared), warmup=warmup, repeat=repeat)
            rows.append(latency_row(label, shape.get("batch", 1), sequence_size(shape), seconds, shape=shape))
    return BenchResult(rows=rows, device="cpu", seconds=time.perf_counter() - start)
