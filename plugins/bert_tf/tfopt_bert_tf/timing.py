"""The benchmark stage: TF eager, TF tf.function and each ONNX model, on the same unpadded feeds.

Defaults are a tiny grid (b=1, s=8, few repeats) so tests run in seconds; pass
``bench_batch_sizes``, ``bench_sequence_lengths``, ``bench_warmup``, ``bench_repeat``,
``bench_threads`` for real runs (bert-base: ``bench_sequence_lengths=[128], bench_repeat=100``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tfopt.bench import latency_row, ort_session, time_interleaved
from tfopt.feeds import int_tuple, session_feed
from tfopt.results import BenchResult, RunContext

from .inputs import token_feeds
from .source import TfSource

DEFAULT_BATCH_SIZES = (1,)
DEFAULT_SEQUENCE_LENGTHS = (8,)
DEFAULT_WARMUP = 2
DEFAULT_REPEAT = 10


def benchmark_source(ctx: RunContext, source: TfSource, models: dict[str, Path]) -> BenchResult:
    """One row per engine and shape: ``tf:eager`` (where the source has an eager form), ``tf:function``, then ``models``."""
    start = time.perf_counter()
    warmup = int(ctx.option("bench_warmup", DEFAULT_WARMUP))
    repeat = int(ctx.option("bench_repeat", DEFAULT_REPEAT))
    threads = int(ctx.option("bench_threads", 0))
    batch_sizes = int_tuple(ctx.option("bench_batch_sizes", DEFAULT_BATCH_SIZES), "bench_batch_sizes")
    sequence_lengths = int_tuple(ctx.option("bench_sequence_lengths", DEFAULT_SEQUENCE_LENGTHS), "bench_sequence_lengths")
    _limit_tf_threads(threads)
    sessions = {label: ort_session(path, threads=threads) for label, path in models.items()}
    roles = source.roles()
    dtypes = {spec.name: spec.dtype.as_numpy_dtype for spec in source.input_signature}
    rng = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        for sequence in sequence_lengths:
            feed = token_feeds(roles, dtypes, batch, sequence, vocab_size=source.vocab_size,
                               pad_token_id=source.pad_token_id, rng=rng, padded=False)
            tensors = source.tensors(feed)
            engines = {}
            if source.eager is not None:
                engines["tf:eager"] = lambda: _materialize(source.eager(*tensors))
            engines["tf:function"] = lambda: _materialize(source.function(*tensors))
            for label, session in sessions.items():
                onnx_feed = session_feed(session, feed)
                engines[label] = lambda session=session, onnx_feed=onnx_feed: session.run(None, onnx_feed)
            ctx.progress(f"benchmarking b={batch} s={sequence}: {', '.join(engines)}")
            timed = time_interleaved(engines, warmup=warmup, repeat=repeat)
            rows += [latency_row(engine, batch, sequence, seconds) for engine, seconds in timed.items()]
    return BenchResult(rows=rows, device="cpu", seconds=time.perf_counter() - start)


def _materialize(outputs) -> None:
    """Wait for TF's results (and pay the copy to numpy, as the ORT side does)."""
    for value in outputs.values():
        value.numpy()


def _limit_tf_threads(threads: int) -> None:
    """Give TF the same thread budget as ORT; only possible before TF's runtime starts (else ignored)."""
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        pass
