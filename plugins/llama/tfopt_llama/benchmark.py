"""The ``benchmark`` hook: one decoding step's latency, torch eager against each ONNX model, interleaved.

Shapes (batch, past, new tokens): a prompt (1, 0, 32) and decode steps (1, 32, 1) and
(4, 32, 1) by default (``--option bench_shapes=b,p,s;...``); unpadded masks. Every engine
runs the same feed; ``time_interleaved`` alternates them so a slow spell on a shared
machine is spread over all. Speed targets against onnxruntime-genai are issue 18's
``scripts/benchmark_llama.py``, not built yet.
"""

from __future__ import annotations

import time
from pathlib import Path

from tfopt import causal_lm
from tfopt.bench import latency_row, ort_session, time_interleaved
from tfopt.results import BenchResult, ExportResult, RunContext

from .step import feeds, output_names, source_model, torch_outputs
from .verify import step_shapes

DEFAULT_BENCH_SHAPES = "1,0,32;1,32,1;4,32,1"


def benchmark_models(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    start = time.perf_counter()
    source = source_model(ctx)
    shapes = step_shapes(ctx, source.max_positions, option="bench_shapes", default=DEFAULT_BENCH_SHAPES)
    sessions = {label: ort_session(path) for label, path in models.items()}
    step = causal_lm.decoder_step(source.model, source.num_layers, lm_head=True)
    repeat, warmup = int(ctx.option("bench_repeat", 20)), int(ctx.option("bench_warmup", 3))
    rows = []
    for shape, feed in zip(shapes, feeds(source, shapes, seed=3)):
        for row in range(1, shape.batch_size):  # timing wants full rows: no padding
            feed[causal_lm.ATTENTION_MASK][row] = 1
        feed[causal_lm.POSITION_IDS] = causal_lm.position_ids_for(feed[causal_lm.ATTENTION_MASK], shape.sequence_length)
        ctx.progress(f"benchmarking batch {shape.batch_size}, past {shape.past_length}, new tokens {shape.sequence_length} ...")
        calls = {"torch": lambda feed=feed: torch_outputs(source, feed, step)}
        for label, session in sessions.items():
            calls[label] = lambda session=session, feed=feed: session.run(output_names(source), feed)
        timings = time_interleaved(calls, warmup=warmup, repeat=repeat)
        axes = {"batch": shape.batch_size, "past": shape.past_length, "sequence": shape.sequence_length}
        rows += [latency_row(label, shape.batch_size, shape.sequence_length, seconds, shape=axes) for label, seconds in timings.items()]
    return BenchResult(rows=rows, device="cpu", seconds=time.perf_counter() - start)
