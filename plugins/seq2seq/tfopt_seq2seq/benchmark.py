"""The ``benchmark`` hook: a decoding step and a whole greedy generation, torch against each ONNX pair, interleaved.

Rows:
- decoding steps (``--bench-shapes b,p,s;...``: batch, past, new tokens; default b=1 and b=4
  at past 32, one new token) over a source of ``SOURCE_LENGTH`` tokens (Whisper: its fixed
  frames): torch runs the decoder step module, each ONNX engine its decoder graph;
- greedy generation of ``GENERATE_TOKENS`` tokens for one source (shape ``{"batch": 1,
  "new_tokens": 32}``): transformers' ``generate`` against :class:`tfopt.encoder_decoder.EncoderDecoder`
  on each pair. Generation stops at neither side's EOS (``eos_token_id`` is left out) so both
  produce every token.
``ort:raw`` pairs the exported decoder with the exported encoder, ``ort:tfopt`` the final ones.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import astuple
from pathlib import Path

import numpy as np

from tfopt import encoder_decoder as names
from tfopt.bench import latency_row, ort_session, time_interleaved
from tfopt.causal_lm import parse_step_shapes
from tfopt.results import BenchResult, ExportResult, RunContext

from . import step as steps
from .export import ENCODER_OUTPUTS
from .generate import generate_torch
from .source import source_model

DEFAULT_BENCH_SHAPES = "1,32,1;4,32,1"
SOURCE_LENGTH = 32
GENERATE_TOKENS = 32
_ENCODER_OF = {"ort:raw": "export", "ort:tfopt": "final"}


def benchmark_models(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    start = time.perf_counter()
    source = source_model(ctx)
    repeat, warmup = int(ctx.option("bench_repeat", 20)), int(ctx.option("bench_warmup", 3))
    sessions = {label: ort_session(path) for label, path in models.items()}
    outputs = ctx.results.get("extra_outputs") or {}
    rng = np.random.default_rng(3)
    module, encoder = steps.decoder_step(source), steps.encoder_step(source)
    rows = []
    for batch, past, new in map(astuple, parse_step_shapes(ctx.option("bench_shapes", DEFAULT_BENCH_SHAPES), "bench_shapes")):
        encoded = steps.encoder_feed(source, batch, SOURCE_LENGTH, rng)
        if not source.spec.audio:
            encoded[names.ATTENTION_MASK][:] = 1  # timing wants full rows
        cross = steps.run_torch(encoder, steps.encoder_inputs(source), encoded)[1:]
        feed = steps.decoder_feed(source, encoded, cross, past, new, rng)
        ctx.progress(f"benchmarking a decoding step: batch {batch}, past {past}, new tokens {new} ...")
        calls = {"torch": lambda feed=feed: steps.run_torch(module, steps.decoder_inputs(source), feed)}
        for label, session in sessions.items():
            calls[label] = lambda session=session, feed=feed: session.run(steps.decoder_outputs(source), feed)
        axes = {"batch": batch, "past": past, "sequence": new}
        timings = time_interleaved(calls, warmup=warmup, repeat=repeat)
        rows += [latency_row(label, batch, new, seconds, shape=axes) for label, seconds in timings.items()]
    pairs = {label: names.EncoderDecoder(ort_session(outputs[ENCODER_OUTPUTS[stage]]), sessions[label])
             for label, stage in _ENCODER_OF.items() if label in sessions and ENCODER_OUTPUTS[stage] in outputs}
    if pairs:
        ctx.progress(f"benchmarking greedy generation of {GENERATE_TOKENS} tokens ...")
        encoded = steps.encoder_feed(source, 1, SOURCE_LENGTH, np.random.default_rng(4))
        no_eos = dataclasses.replace(source, eos_token_id=None)
        calls = {"torch": lambda: generate_torch(no_eos, encoded, GENERATE_TOKENS)}
        for label, pair in pairs.items():
            pair.tokens = dataclasses.replace(pair.tokens, eos_token_id=None)
            calls[label] = lambda pair=pair: pair.generate(encoded, GENERATE_TOKENS)
        timings = time_interleaved(calls, warmup=1, repeat=max(3, repeat // 4), block=1)
        axes = {"batch": 1, "new_tokens": GENERATE_TOKENS}
        rows += [latency_row(label, 1, GENERATE_TOKENS, seconds, shape=axes) for label, seconds in timings.items()]
    return BenchResult(rows=rows, device="cpu", seconds=time.perf_counter() - start)
