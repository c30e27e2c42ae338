"""Dummy feeds that look like tokenized text: ids in the vocabulary, right padding, two segments.

Padding matters: a fused attention that ignores the mask, or an embedding fusion that
computes positions wrongly, only shows on rows shorter than the batch's longest.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from tfopt.feeds import DEFAULT_BATCH_SIZES, DEFAULT_SEQUENCE_LENGTHS, int_tuple, lengths_within, valid_lengths
from tfopt.results import ExportResult, RunContext

from .cache import source_model
from .models import SourceModel


def token_feeds(
    input_names: Iterable[str],
    batch_size: int,
    sequence_length: int,
    *,
    vocab_size: int,
    pad_token_id: int,
    rng: np.random.Generator,
    dtype=np.int64,
    padded: bool = True,
) -> dict[str, np.ndarray]:
    """One feed for the named inputs; ``padded=False`` gives full-length rows (benchmarks).

    Row i keeps ``S - i*S//B`` tokens (:func:`tfopt.feeds.valid_lengths`; B=4, S=8: 8, 6, 4, 2).
    """
    lengths = valid_lengths(batch_size, sequence_length) if padded else np.full(batch_size, sequence_length)
    positions = np.arange(sequence_length)
    valid = positions[None, :] < lengths[:, None]
    ids = rng.integers(0, vocab_size - 1, size=(batch_size, sequence_length))
    ids = ids + (ids >= pad_token_id)  # every id but the pad id, uniformly
    feeds = {
        "input_ids": np.where(valid, ids, pad_token_id),
        "attention_mask": valid,
        # first half of each row's tokens is segment 0, the rest segment 1; padding is 0
        "token_type_ids": valid & (positions[None, :] >= (lengths[:, None] + 1) // 2),
    }
    return {name: feeds[name].astype(dtype) for name in input_names}


def dummy_inputs(
    input_names: Iterable[str],
    *,
    vocab_size: int,
    pad_token_id: int,
    batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
    sequence_lengths: Iterable[int] = DEFAULT_SEQUENCE_LENGTHS,
    dtype=np.int64,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """One padded feed per (batch size, sequence length) in the grid, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    names = tuple(input_names)
    return [
        token_feeds(names, batch, sequence, vocab_size=vocab_size, pad_token_id=pad_token_id, rng=rng, dtype=dtype)
        for batch in batch_sizes
        for sequence in sequence_lengths
    ]


def checked_lengths(source: SourceModel, sequence_lengths, option: str) -> tuple[int, ...]:
    """The lengths option, if the model's position table covers them all."""
    return lengths_within(sequence_lengths, option, source.max_sequence_length, source.name)


def dummy_inputs_for(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    """The ``make_dummy_inputs`` hook: the grid from ``ctx.options`` (or the default) for the exported inputs.

    int32 when ``input_int32`` is set or the graph takes int32, else int64.
    """
    source = source_model(ctx)
    sequence_lengths = checked_lengths(source, ctx.option("sequence_lengths", DEFAULT_SEQUENCE_LENGTHS), "sequence_lengths")
    int32 = ctx.option("input_int32", False) or set(exported.io.inputs.values()) == {"int32"}
    return dummy_inputs(
        exported.io.inputs,
        vocab_size=source.vocab_size,
        pad_token_id=source.pad_token_id,
        batch_sizes=int_tuple(ctx.option("batch_sizes", DEFAULT_BATCH_SIZES), "batch_sizes"),
        sequence_lengths=sequence_lengths,
        dtype=np.int32 if int32 else np.int64,
    )
