"""The ``benchmark`` hook: HF eager, HF with the C++ extension, and every ONNX model ONNX Runtime's CPU provider runs.

Engines are timed interleaved (``tfopt.bench.time_interleaved``) on full-length rows with a
global CLS token. A CUDA-target model is left out: it has no CPU kernel here.
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
from .extension import load as load_extension
from .inputs import checked_lengths, token_feeds
from .modeling import LongformerForExport
from .verify import has_contrib_attention

TINY_SEQUENCE_LENGTHS = (64, 512)
REAL_SEQUENCE_LENGTHS = (1024,)


def benchmark_models(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    start = time.perf_counter()
    source = source_model(ctx)
    batch_sizes = int_tuple(ctx.option("bench_batch_sizes", (1,)), "bench_batch_sizes")
    default = TINY_SEQUENCE_LENGTHS if source.is_tiny else REAL_SEQUENCE_LENGTHS
    lengths = checked_lengths(source, ctx.option("bench_sequence_lengths", default), "bench_sequence_lengths")
    repeat, warmup = int(ctx.option("bench_repeat", 10)), int(ctx.option("bench_warmup", 2))
    sessions = {}
    for label, path in models.items():
        if has_contrib_attention(Path(path)):
            ctx.progress(f"not timing {label}: com.microsoft::LongformerAttention has no CPU kernel (CUDA target)")
            continue
        sessions[label] = ort_session(path)
    load_extension(ctx.progress)  # a progress line if it has to be compiled first
    patched = LongformerForExport(source.model).eval()
    rng = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        for sequence in lengths:
            ctx.progress(f"benchmarking batch {batch}, sequence {sequence} ...")
            feed = token_feeds(batch, sequence, vocab_size=source.vocab_size, pad_token_id=source.pad_token_id,
                               rng=rng, padded=False, extra_globals=0)
            tensors = {name: torch.from_numpy(value) for name, value in feed.items()}

            def eager(module):
                def call():
                    with torch.inference_mode():
                        return module(**tensors)
                return call

            calls = {"torch": eager(source.model), "torch+extension": eager(patched)}
            for label, session in sessions.items():
                prepared = session_feed(session, feed)
                calls[label] = (lambda s=session, f=prepared: s.run(None, f))
            for label, seconds in time_interleaved(calls, warmup=warmup, repeat=repeat).items():
                rows.append(latency_row(label, batch, sequence, seconds))
    return BenchResult(rows=rows, device="cpu", seconds=time.perf_counter() - start)
