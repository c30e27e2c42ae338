"""The ``benchmark`` hook: PyTorch eager and every ONNX model on the steps generation is made of.

Decoding is one token per step against a growing past, so the decode grid is batch size x
past length at sequence length 1; the prompt step (no past, many tokens) is timed apart.
Both in the same process with the same inputs, so the engines compare fairly. Masks are
unpadded: padding changes no kernel's amount of work. ONNX Runtime sessions run through
IO binding (inputs bound where numpy holds them, outputs left in ORT's buffers), as the
generation loop does: a decode step then pays no copy of its past in or its present out.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tfopt.bench import latency_row, ort_session, time_calls
from tfopt.feeds import int_tuple, session_feed
from tfopt.results import BenchResult, ExportResult, LatencyRow, RunContext

from .cache import source_model
from .decoder import decoder_step, output_names, torch_feed
from .inputs import StepShape, check_fits, feeds_for_shapes, non_negative_ints
from .sessions import bound_call

DEFAULT_BATCH_SIZES = (1, 8, 32, 128)
DEFAULT_PAST_LENGTHS = (4, 8, 32, 128)
DEFAULT_PROMPT_LENGTHS = (32,)
DEFAULT_GENERATE_TOKENS = 16
DECODE, PROMPT = "decode", "prompt"


@dataclass
class DecoderLatencyRow(LatencyRow):
    """A latency row that says which step it timed and how long the past was."""

    step: str = DECODE  # "decode" (one new token per row) or "prompt" (past 0, many tokens)
    past_length: int = 0
    tokens_per_second: float = 0.0  # new tokens per second at p50: batch x sequence / p50


@dataclass
class GenerationRow:
    """End-to-end greedy generation driven by one engine, and whether it produced PyTorch's tokens."""

    engine: str
    batch_size: int
    prompt_length: int
    new_tokens: int
    seconds: float
    tokens_per_second: float
    matches_torch: bool | None  # None for the torch row itself


@dataclass
class DecoderBenchResult(BenchResult):
    generation: list[GenerationRow] = field(default_factory=list)
    grid_notes: list[str] = field(default_factory=list)  # default lengths clipped or dropped to fit the model, and why


def bench_shapes(ctx: RunContext, max_positions: int | None = None) -> list[tuple[str, StepShape]]:
    """Decode steps over batch x past at sequence 1, then one prompt step per batch size."""
    return fitted_bench_shapes(ctx, max_positions)[0]


def fitted_bench_shapes(ctx: RunContext, max_positions: int | None = None) -> tuple[list[tuple[str, StepShape]], list[str]]:
    """The benchmark grid and a note for every default length changed to fit ``max_positions``.

    The default grid (past up to 128) is GPT-2 small's; a model with fewer positions
    (tiny-gpt2 has 128, so past 128 + 1 new token does not fit) gets each default length
    clipped to the longest that fits, and a clipped length that repeats another is dropped.
    Lengths the user asked for are kept as asked: :func:`check_fits` refuses them.
    """
    batch_sizes = int_tuple(ctx.option("bench_batch_sizes", DEFAULT_BATCH_SIZES), "bench_batch_sizes")
    notes: list[str] = []
    past_option = ctx.option("bench_past_lengths")
    past_lengths = non_negative_ints(DEFAULT_PAST_LENGTHS if past_option is None else past_option, "bench_past_lengths")
    # The host's generic bench_sequence_lengths (``tfopt bench --sequence-lengths``) means prompt lengths here.
    prompt_option = ctx.option("bench_prompt_lengths", ctx.option("bench_sequence_lengths"))
    prompts = non_negative_ints(DEFAULT_PROMPT_LENGTHS if prompt_option is None else prompt_option, "bench_prompt_lengths")
    prompt_lengths = tuple(length for length in prompts if length > 0)  # 0: no prompt rows
    if max_positions is not None:
        if past_option is None:
            past_lengths = _fitted("past length", past_lengths, max_positions, reserved=1, notes=notes)
        if prompt_option is None:
            prompt_lengths = _fitted("prompt length", prompt_lengths, max_positions, reserved=0, notes=notes)
    shapes = [(DECODE, StepShape(b, p, 1)) for b in batch_sizes for p in past_lengths]
    shapes += [(PROMPT, StepShape(b, 0, s)) for b in batch_sizes for s in prompt_lengths]
    return shapes, notes


def _fitted(what: str, lengths: tuple[int, ...], positions: int, *, reserved: int, notes: list[str]) -> tuple[int, ...]:
    """Each length above ``positions - reserved`` clipped to it, or dropped when that repeats another; a note each."""
    longest = max(positions - reserved, 0)
    why = f"the model has {positions} positions" + (" and each decode step adds 1 token" if reserved else "")
    kept: list[int] = []
    for length in lengths:
        if length > longest:
            if longest in kept or longest in lengths:
                notes.append(f"default {what} {length} dropped ({why})")
                continue
            notes.append(f"default {what} {length} clipped to {longest} ({why})")
            length = longest
        kept.append(length)
    return tuple(kept)


def _row(engine: str, kind: str, shape: StepShape, seconds) -> DecoderLatencyRow:
    base = latency_row(engine, shape.batch_size, shape.sequence_length, seconds)
    tokens = shape.batch_size * shape.sequence_length
    return DecoderLatencyRow(
        **vars(base), step=kind, past_length=shape.past_length, tokens_per_second=tokens / (base.p50_ms / 1000.0)
    )


def benchmark_models(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> DecoderBenchResult:
    """Latency percentiles and tokens/s per engine ("torch" + the labels of ``models``) and step shape."""
    start = time.perf_counter()
    source = source_model(ctx)
    shapes, grid_notes = fitted_bench_shapes(ctx, source.max_positions)
    for note in grid_notes:
        ctx.progress(f"benchmark grid: {note}")
    check_fits(source, [shape for _, shape in shapes])
    repeat = int(ctx.option("bench_repeat", 20))
    warmup = int(ctx.option("bench_warmup", 3))
    threads = int(ctx.option("threads", 0))  # 0: each engine's default; else the same count for all
    sessions = {label: ort_session(path, threads=threads) for label, path in models.items()}
    with _torch_threads(threads):
        rows = _latency_rows(ctx, source, shapes, sessions, repeat, warmup)
        generation = _generation_rows(ctx, source, sessions)
    return DecoderBenchResult(
        rows=rows, device="cpu", seconds=time.perf_counter() - start, generation=generation, grid_notes=grid_notes
    )


@contextlib.contextmanager
def _torch_threads(threads: int):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _latency_rows(ctx: RunContext, source, shapes, sessions: dict, repeat: int, warmup: int) -> list[DecoderLatencyRow]:
    step = decoder_step(source)
    rows = []
    for index, (kind, shape) in enumerate(shapes):
        ctx.progress(
            f"benchmarking {kind}: batch {shape.batch_size}, past {shape.past_length}, sequence {shape.sequence_length} ..."
        )
        rows += _time_shape(source, step, sessions, kind, shape, seed=index, repeat=repeat, warmup=warmup)
    return rows


def _time_shape(source, step, sessions: dict, kind: str, shape: StepShape, *, seed: int, repeat: int, warmup: int):
    """One row per engine for one shape; its feed (1.2 GB of past at GPT-2 small, b=128, past=128) dies on return."""
    (feed,) = feeds_for_shapes(source, [shape], seed=seed, padded=False)
    tensors = torch_feed(feed, source.num_layers)  # shares memory with ``feed``
    names = output_names(source)
    with torch.inference_mode():
        rows = [_row("torch", kind, shape, time_calls(lambda: step(*tensors), warmup=warmup, repeat=repeat))]
    for label, session in sessions.items():
        call = bound_call(session, session_feed(session, feed), names, label)
        rows.append(_row(label, kind, shape, time_calls(call, warmup=warmup, repeat=repeat)))
    return rows


def _generation_rows(ctx: RunContext, source, sessions: dict) -> list[GenerationRow]:
    """Greedy generation of ``bench_generate_tokens`` tokens (0: skip) from a left-padded batch of prompts."""
    new_tokens = int(ctx.option("bench_generate_tokens", DEFAULT_GENERATE_TOKENS))
    if new_tokens <= 0 or not source.lm_head:
        return []
    from .generate import example_prompts, greedy_generate_onnx, greedy_generate_torch

    batch_size = int(ctx.option("bench_generate_batch_size", 2))
    prompt_length = int(ctx.option("bench_generate_prompt_length", 8))
    check_fits(source, [StepShape(batch_size, prompt_length, new_tokens)])
    input_ids, attention_mask = example_prompts(source, batch_size, prompt_length)
    ctx.progress(f"generating {new_tokens} tokens greedily with each engine ...")
    rows = []
    started = time.perf_counter()
    reference = greedy_generate_torch(source.model, input_ids, attention_mask, new_tokens)
    elapsed = time.perf_counter() - started
    rows.append(GenerationRow("torch", batch_size, prompt_length, new_tokens, elapsed, batch_size * new_tokens / elapsed, None))
    for label, session in sessions.items():
        started = time.perf_counter()
        tokens = greedy_generate_onnx(session, input_ids, attention_mask, new_tokens)
        elapsed = time.perf_counter() - started
        rows.append(
            GenerationRow(
                label, batch_size, prompt_length, new_tokens, elapsed, batch_size * new_tokens / elapsed,
                bool((tokens == reference).all()),
            )
        )
    return rows
