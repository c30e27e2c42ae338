"""The ``benchmark`` hook: torch eager, ORT on the export and ORT on tfopt's model, interleaved.

``tfopt.bench.time_interleaved`` alternates the engines in blocks, so a slow spell on a shared
machine hits all of them. Each row times b captions (full length, no padding) against b images
at one sequence length: ``bench_batch_sizes`` (default 1) x ``bench_sequence_lengths`` (default 16).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from tfopt.bench import latency_row, ort_session, time_interleaved
from tfopt.feeds import int_tuple, lengths_within, session_feed
from tfopt.results import BenchResult, ExportResult, RunContext

from .cache import source_model
from .inputs import feed_for


def benchmark_models(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    """Latency percentiles per engine ("torch" + the labels of ``models``) and shape."""
    start = time.perf_counter()
    source = source_model(ctx)
    batch_sizes = int_tuple(ctx.option("bench_batch_sizes", (1,)), "bench_batch_sizes")
    lengths = lengths_within(
        ctx.option("bench_sequence_lengths", (min(16, source.max_positions),)), "bench_sequence_lengths",
        source.max_positions, source.name,
    )
    repeat = int(ctx.option("bench_repeat", 20))
    warmup = int(ctx.option("bench_warmup", 3))
    sessions = {label: ort_session(path) for label, path in models.items()}
    rows = []
    for batch in batch_sizes:
        for length in lengths:
            ctx.progress(f"benchmarking {batch} captions x {batch} images, sequence {length} ...")
            feed = feed_for(source, batch, batch, length, seed=1, padded=False)
            tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in feed.items()}
            calls = {"torch": lambda: source.model(**tensors)}
            for label, session in sessions.items():
                calls[label] = lambda session=session, prepared=session_feed(session, feed): session.run(None, prepared)
            with torch.inference_mode():
                timed = time_interleaved(calls, warmup=warmup, repeat=repeat)
            shape = {"text_batch": batch, "image_batch": batch, "sequence": length}
            rows += [latency_row(engine, batch, length, seconds, shape=shape) for engine, seconds in timed.items()]
    return BenchResult(rows=rows, device="cpu", seconds=time.perf_counter() - start)
