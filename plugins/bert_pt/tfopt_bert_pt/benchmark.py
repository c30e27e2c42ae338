"""The ``benchmark`` hook: PyTorch eager and every ONNX model, same inputs, same process."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from tfopt.bench import latency_row, ort_session, time_calls
from tfopt.feeds import int_tuple, session_feed
from tfopt.results import BenchResult, ExportResult, RunContext

from .cache import source_model
from .inputs import checked_lengths, token_feeds

TINY_SEQUENCE_LENGTHS = (8, 32)
REAL_SEQUENCE_LENGTHS = (32, 128)  # short and typical sentence-embedding inputs


def benchmark_models(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    """Latency percentiles per engine ("torch" + the labels of ``models``) over batch x sequence, full masks."""
    start = time.perf_counter()
    source = source_model(ctx)
    batch_sizes = int_tuple(ctx.option("bench_batch_sizes", (1,)), "bench_batch_sizes")
    default_lengths = TINY_SEQUENCE_LENGTHS if source.is_tiny else REAL_SEQUENCE_LENGTHS
    sequence_lengths = checked_lengths(source, ctx.option("bench_sequence_lengths", default_lengths), "bench_sequence_lengths")
    repeat = int(ctx.option("bench_repeat", 20))
    warmup = int(ctx.option("bench_warmup", 3))
    sessions = {label: ort_session(path) for label, path in models.items()}
    rng = np.random.default_rng(0)
    rows = []
    for batch_size in batch_sizes:
        for sequence_length in sequence_lengths:
            ctx.progress(f"benchmarking batch {batch_size}, sequence {sequence_length} ...")
            feed = token_feeds(
                source.input_names, batch_size, sequence_length,
                vocab_size=source.vocab_size, pad_token_id=source.pad_token_id, rng=rng, padded=False,
            )
            tensors = {name: torch.from_numpy(value) for name, value in feed.items()}
            with torch.inference_mode():
                seconds = time_calls(lambda: source.model(**tensors), warmup=warmup, repeat=repeat)
            rows.append(latency_row("torch", batch_size, sequence_length, seconds))
            for label, session in sessions.items():
                prepared = session_feed(session, feed)
                seconds = time_calls(lambda: session.run(None, prepared), warmup=warmup, repeat=repeat)
                rows.append(latency_row(label, batch_size, sequence_length, seconds))
    return BenchResult(rows=rows, device="cpu", seconds=time.perf_counter() - start)
