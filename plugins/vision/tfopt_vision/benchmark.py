"""The ``benchmark`` hook: torch eager, ORT on the export and ORT on tfopt's model, interleaved.

``tfopt.bench.time_interleaved`` alternates the engines in blocks, so a slow spell on a shared
machine hits all of them. Same image, same process; batch sizes from ``bench_batch_sizes``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from tfopt.bench import latency_row, ort_session, time_interleaved
from tfopt.feeds import int_tuple, session_feed
from tfopt.results import BenchResult, ExportResult, RunContext

from .cache import source_model
from .export import INPUT_NAME
from .inputs import pixel_feeds, refuse_sequence_options


def benchmark_models(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    """Latency percentiles per engine ("torch" + the labels of ``models``) and batch size."""
    start = time.perf_counter()
    refuse_sequence_options(ctx, "bench_sequence_lengths", "bench_axis_sizes")
    source = source_model(ctx)
    batch_sizes = int_tuple(ctx.option("bench_batch_sizes", (1,)), "bench_batch_sizes")
    repeat = int(ctx.option("bench_repeat", 20))
    warmup = int(ctx.option("bench_warmup", 3))
    sessions = {label: ort_session(path) for label, path in models.items()}
    rows = []
    for batch, feed in zip(batch_sizes, pixel_feeds(batch_sizes, source.image_size, source.num_channels, seed=1)):
        ctx.progress(f"benchmarking batch {batch} ...")
        tensor = torch.from_numpy(np.ascontiguousarray(feed[INPUT_NAME]))
        calls = {"torch": lambda: source.model(pixel_values=tensor)}
        for label, session in sessions.items():
            calls[label] = lambda session=session, prepared=session_feed(session, feed): session.run(None, prepared)
        with torch.inference_mode():
            timed = time_interleaved(calls, warmup=warmup, repeat=repeat)
        rows += [latency_row(engine, batch, 0, seconds, shape={"batch": batch}) for engine, seconds in timed.items()]
    return BenchResult(rows=rows, device="cpu", seconds=time.perf_counter() - start)
