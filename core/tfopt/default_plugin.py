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


@hookimpl(trylast=True)
def fuse(ctx: RunContext, exported: ExportResult) -> FuseResult:
    from .graph import fuse_file

    ctx.progress(f"fusing {Path(exported.model_path).name} ...")
    return fuse_file(
        exported.model_path,
        Path(ctx.work_dir) / OPTIMIZED_FILE,
        exported.info,
        disabled=ctx.option("disabled", ()),
        input_int32=bool(ctx.option("input_int32", False)),
        target=ctx.option("target", "cpu"),
        validate=bool(ctx.option("validate", True)),
        progress=ctx.progress,
    )


@hookimpl(trylast=True)
def convert_precision(ctx: RunContext, fused: FuseResult) -> PrecisionResult:
    precision = ctx.option("precision", "fp32")
    if precision != "fp32":
        ctx.progress(f"converting to {precision} ...")
    converted = precision_module.convert(fused.model_path, precision)
    if precision != "fp32" and ctx.option("validate", True):
        from .graph.validate import validate_written

        converted.validation = validate_written(converted.model_path, fused.model_path, precision)
    return converted


@hookimpl(trylast=True)
def make_dummy_inputs(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    return feeds_module.dummy_feeds(
        exported.model_path,
        batch_sizes=feeds_module.int_tuple(ctx.option("batch_sizes", feeds_module.DEFAULT_BATCH_SIZES), "batch_sizes"),
        sequence_lengths=feeds_module.int_tuple(
            ctx.option("sequence_lengths", feeds_module.DEFAULT_SEQUENCE_LENGTHS), "sequence_lengths"
        ),
        id_limit=int(ctx.option("id_limit", feeds_module.DEFAULT_ID_LIMIT)),
    )


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
    reference = ort_session(exported.model_path)
    candidate = ort_session(model_path)
    output_name = reference.get_outputs()[0].name
    candidate_names = [output.name for output in candidate.get_outputs()]
    candidate_name = output_name if output_name in candidate_names else candidate_names[0]
    ctx.progress(f"verifying {Path(model_path).name} against the exported model on {len(inputs)} input shapes ...")
    references, actuals, valids, labels = [], [], [], []
    for feed in inputs:
        expected = reference.run([output_name], feeds_module.session_feed(reference, feed))[0]
        actual = candidate.run([candidate_name], feeds_module.session_feed(candidate, feed))[0]
        references.append(expected)
        actuals.append(actual)
        valids.append(_valid_positions(feed, expected))
        first = next(iter(feed.values()))
        labels.append({"batch_size": int(first.shape[0]), "sequence_length": int(first.shape[1]) if first.ndim > 1 else 0})
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
    batch_sizes = feeds_module.int_tuple(ctx.option("bench_batch_sizes", DEFAULT_BENCH_BATCH_SIZES), "bench_batch_sizes")
    sequence_lengths = feeds_module.int_tuple(
        ctx.option("bench_sequence_lengths", DEFAULT_BENCH_SEQUENCE_LENGTHS), "bench_sequence_lengths"
    )
    repeat = int(ctx.option("bench_repeat", 20))
    warmup = int(ctx.option("bench_warmup", 3))
    sessions = {label: ort_session(path) for label, path in models.items()}
    grid = feeds_module.dummy_feeds(
        exported.model_path,
        batch_sizes=batch_sizes,
        sequence_lengths=sequence_lengths,
        id_limit=int(ctx.option("id_limit", feeds_module.DEFAULT_ID_LIMIT)),
        padded=False,
    )
    shapes = [(b, s) for b in batch_sizes for s in sequence_lengths]
    rows = []
    for (batch_size, sequence_length), feed in zip(shapes, grid):
        ctx.progress(f"benchmarking batch {batch_size}, sequence {sequence_length} ...")
        for label, session in sessions.items():
            prepared = feeds_module.session_feed(session, feed)
            seconds = time_calls(lambda: session.run(None, prepared), warmup=warmup, repeat=repeat)
            rows.append(latency_row(label, batch_size, sequence_length, seconds))
    return BenchResult(rows=rows, device="cpu", seconds=time.perf_counter() - start)
