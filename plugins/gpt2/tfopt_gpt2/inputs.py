"""Dummy decoding steps: batch 1-8, past 0-N, new tokens 1-N, left padding, positions from the mask.

Generation pads batches on the LEFT so that every row's next token sits at the last
position; the padded slots may lie in the past, in the new tokens, or both. A fused
attention that ignores the mask, or positions computed as ``arange`` instead of from the
mask, only shows on such rows, so every row but the first gets its own amount of padding.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from tfopt.causal_lm import ATTENTION_MASK, INPUT_IDS, StepShape, left_padded_mask, position_ids_for, step_feed  # noqa: F401  (re-exported)
from tfopt.errors import TfoptError
from tfopt.feeds import int_tuple
from tfopt.results import ExportResult, RunContext

from .cache import source_model
from .models import SourceModel

DEFAULT_CASES = 32
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_PAST = 16
DEFAULT_MAX_SEQUENCE = 16
# Shapes every default set starts with: the first step (no past) with one and many tokens,
# single-token decode steps, and a batch wider than one with both past and new tokens.
CORNER_CASES = ((1, 0, 1), (1, 0, 8), (4, 0, 6), (1, 7, 1), (8, 16, 1), (3, 5, 4))


def random_shapes(
    count: int, *, max_batch: int, max_past: int, max_sequence: int, max_total: int, rng: np.random.Generator
) -> list[StepShape]:
    """``count`` shapes: the corner cases that fit, then random ones (batch, past and new tokens uniform)."""
    fitting = [(b, p, s) for b, p, s in CORNER_CASES if b <= max_batch and p <= max_past and s <= max_sequence]
    shapes = [StepShape(b, p, s) for b, p, s in fitting if p + s <= max_total][:count]
    while len(shapes) < count:
        sequence = int(rng.integers(1, max_sequence + 1))
        past = int(rng.integers(0, min(max_past, max_total - sequence) + 1))
        shapes.append(StepShape(int(rng.integers(1, max_batch + 1)), past, sequence))
    return shapes


def grid_shapes(batch_sizes: Iterable[int], past_lengths: Iterable[int], sequence_lengths: Iterable[int]) -> list[StepShape]:
    return [StepShape(b, p, s) for b in batch_sizes for p in past_lengths for s in sequence_lengths]


def feeds_for_shapes(
    source: SourceModel, shapes: Iterable[StepShape], *, seed: int = 0, int_dtype=np.int64, padded: bool = True
) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        step_feed(
            shape,
            num_layers=source.num_layers,
            num_heads=source.num_heads,
            head_size=source.head_size,
            vocab_size=source.vocab_size,
            rng=rng,
            int_dtype=int_dtype,
            padded=padded,
        )
        for shape in shapes
    ]


def check_fits(source: SourceModel, shapes: Iterable[StepShape]) -> None:
    """A clear error instead of an index error deep in the position embedding."""
    for shape in shapes:
        if shape.total_length > source.max_positions:
            raise TfoptError(
                f"past {shape.past_length} + sequence {shape.sequence_length} exceeds {source.name}'s "
                f"{source.max_positions} positions"
            )


def non_negative_ints(value, name: str) -> tuple[int, ...]:
    """Like :func:`tfopt.feeds.int_tuple`, but 0 is valid (past length 0: the first step)."""
    parts = value.split(",") if isinstance(value, str) else value if isinstance(value, Iterable) else [value]
    try:
        lengths = tuple(int(part) for part in parts if str(part).strip())
    except (TypeError, ValueError):
        raise TfoptError(f"{name} must be integers >= 0, got {value!r}") from None
    if not lengths or any(length < 0 for length in lengths):
        raise TfoptError(f"{name} must be integers >= 0, got {value!r}")
    return lengths


def requested_shapes(ctx: RunContext, source: SourceModel) -> list[StepShape]:
    """A grid when ``batch_sizes``/``past_lengths``/``sequence_lengths`` are given, else ``cases`` random shapes."""
    if any(ctx.option(name) is not None for name in ("batch_sizes", "past_lengths", "sequence_lengths")):
        shapes = grid_shapes(
            int_tuple(ctx.option("batch_sizes", (1, 4)), "batch_sizes"),
            non_negative_ints(ctx.option("past_lengths", (0, 8)), "past_lengths"),
            int_tuple(ctx.option("sequence_lengths", (1, 8)), "sequence_lengths"),
        )
    else:
        count = int(ctx.option("cases", DEFAULT_CASES))
        if count <= 0:
            raise TfoptError(f"cases must be a positive integer, got {count}")
        shapes = random_shapes(
            count,
            max_batch=int(ctx.option("max_batch_size", DEFAULT_MAX_BATCH)),
            max_past=int(ctx.option("max_past_length", DEFAULT_MAX_PAST)),
            max_sequence=int(ctx.option("max_sequence_length", DEFAULT_MAX_SEQUENCE)),
            max_total=source.max_positions,
            rng=np.random.default_rng(int(ctx.option("seed", 0))),
        )
    check_fits(source, shapes)
    return shapes


def dummy_inputs_for(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    """The ``make_dummy_inputs`` hook: ``ctx.options['cases']`` random steps (default 32) or the requested grid.

    Ids, mask and positions are int32 when ``input_int32`` is set or the graph takes int32.
    """
    source = source_model(ctx)
    int32 = ctx.option("input_int32", False) or exported.io.inputs.get(INPUT_IDS) == "int32"
    return feeds_for_shapes(
        source, requested_shapes(ctx, source), seed=int(ctx.option("seed", 0)), int_dtype=np.int32 if int32 else np.int64
    )


def shape_of(feed: dict[str, np.ndarray]) -> StepShape:
    batch, sequence = feed[INPUT_IDS].shape
    return StepShape(int(batch), int(feed[ATTENTION_MASK].shape[1]) - int(sequence), int(sequence))
