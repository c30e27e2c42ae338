"""Dummy feeds for Longformer: right-padded rows, global tokens at CLS and at random positions.

Lengths straddle the window (below, at and above multiples of it) so the in-graph padding
to a multiple of the window is exercised; long lengths (up to 4096) are options.
"""

from __future__ import annotations

import numpy as np

from tfopt.feeds import int_tuple, lengths_within, valid_lengths
from tfopt.results import ExportResult, RunContext

from .cache import source_model
from .models import SourceModel

INPUT_NAMES = ("input_ids", "attention_mask", "global_attention_mask")
DEFAULT_BATCH_SIZES = (1, 3)


def default_sequence_lengths(source: SourceModel) -> tuple[int, ...]:
    """1, a length inside one window, one just past a multiple of 2w, and one of several windows."""
    w = source.window
    return tuple(sorted({1, w + 1, 2 * w + 1, 5 * w - 1}))


def token_feeds(
    batch_size: int, sequence_length: int, *, vocab_size: int, pad_token_id: int, rng: np.random.Generator,
    padded: bool = True, extra_globals: int = 2, dtype=np.int64,
) -> dict[str, np.ndarray]:
    """One feed; row i keeps ``S - i*S//B`` tokens. Every row has a global CLS token; rows 0, 2, ... also
    ``extra_globals`` at random unpadded positions (so rows differ in their number of global tokens)."""
    lengths = valid_lengths(batch_size, sequence_length) if padded else np.full(batch_size, sequence_length)
    valid = np.arange(sequence_length)[None, :] < lengths[:, None]
    ids = rng.integers(0, vocab_size - 1, size=(batch_size, sequence_length))
    ids = ids + (ids >= pad_token_id)
    glob = np.zeros((batch_size, sequence_length), dtype=np.int64)
    glob[:, 0] = 1
    for row in range(0, batch_size, 2):
        if lengths[row] > 1:
            glob[row, rng.choice(np.arange(1, lengths[row]), size=min(extra_globals, lengths[row] - 1), replace=False)] = 1
    return {
        "input_ids": np.where(valid, ids, pad_token_id).astype(dtype),
        "attention_mask": valid.astype(dtype),
        "global_attention_mask": (glob * valid).astype(dtype),
    }


def checked_lengths(source: SourceModel, lengths, option: str) -> tuple[int, ...]:
    """The lengths option, if the model's position table covers them all."""
    return lengths_within(lengths, option, source.max_sequence_length, source.name)


def dummy_inputs_for(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    """The ``make_dummy_inputs`` hook: batch_sizes x sequence_lengths (options), padded, with global tokens."""
    source = source_model(ctx)
    lengths = checked_lengths(source, ctx.option("sequence_lengths", default_sequence_lengths(source)), "sequence_lengths")
    batches = int_tuple(ctx.option("batch_sizes", DEFAULT_BATCH_SIZES), "batch_sizes")
    rng = np.random.default_rng(0)
    return [
        token_feeds(b, s, vocab_size=source.vocab_size, pad_token_id=source.pad_token_id, rng=rng)
        for b in batches
        for s in lengths
    ]
