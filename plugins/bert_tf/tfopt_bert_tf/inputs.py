"""Dummy feeds that look like tokenized text: ids in the vocabulary, right padding, two segments.

Padding matters: a fused attention that ignores the mask, or an embedding fusion that
computes positions wrongly, only shows on rows shorter than the batch's longest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from tfopt.feeds import int_tuple
from tfopt.results import ExportResult, RunContext

if TYPE_CHECKING:
    from .source import TfSource

DEFAULT_BATCH_SIZES = (1, 3)
DEFAULT_SEQUENCE_LENGTHS = (7, 16)


def valid_lengths(batch_size: int, sequence_length: int) -> np.ndarray:
    """Row i keeps ``S - i*S//B`` tokens: row 0 is full, every later row shorter (B=4, S=8: 8, 6, 4, 2)."""
    rows = np.arange(batch_size)
    return sequence_length - (rows * sequence_length) // batch_size


def token_feeds(
    roles: Mapping[str, str],
    dtypes: Mapping[str, str],
    batch_size: int,
    sequence_length: int,
    *,
    vocab_size: int,
    pad_token_id: int,
    rng: np.random.Generator,
    padded: bool = True,
) -> dict[str, np.ndarray]:
    """One feed: ``roles`` maps "ids"/"mask"/"segments" to input names, ``dtypes`` names to numpy dtypes.

    ``padded=False`` gives full-length rows (benchmarks).
    """
    lengths = valid_lengths(batch_size, sequence_length) if padded else np.full(batch_size, sequence_length)
    positions = np.arange(sequence_length)
    valid = positions[None, :] < lengths[:, None]
    ids = rng.integers(0, vocab_size - 1, size=(batch_size, sequence_length))
    ids = ids + (ids >= pad_token_id)  # every id but the pad id, uniformly
    by_role = {
        "ids": np.where(valid, ids, pad_token_id),
        "mask": valid,
        # first half of each row's tokens is segment 0, the rest segment 1; padding is 0
        "segments": valid & (positions[None, :] >= (lengths[:, None] + 1) // 2),
    }
    return {name: by_role[role].astype(dtypes.get(name, "int32")) for role, name in roles.items()}


def dummy_inputs(
    roles: Mapping[str, str],
    dtypes: Mapping[str, str],
    *,
    vocab_size: int,
    pad_token_id: int,
    batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
    sequence_lengths: Iterable[int] = DEFAULT_SEQUENCE_LENGTHS,
    padded: bool = True,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """One feed per (batch size, sequence length) in the grid, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    return [
        token_feeds(roles, dtypes, batch, sequence, vocab_size=vocab_size, pad_token_id=pad_token_id, rng=rng, padded=padded)
        for batch in batch_sizes
        for sequence in sequence_lengths
    ]


def valid_mask(feed: Mapping[str, np.ndarray], roles: Mapping[str, str]) -> np.ndarray | None:
    """(batch, seq) bool of real tokens, from the mask input (None if the model has none)."""
    name = roles.get("mask")
    return None if name is None else np.asarray(feed[name]).astype(bool)


def feeds_for(ctx: RunContext, source: "TfSource", exported: ExportResult) -> list[dict[str, np.ndarray]]:
    """The make_dummy_inputs stage: padded feeds in the exported graph's dtypes over the ctx's grid.

    Sequence lengths beyond the model's position table are dropped (its longest is used if none is left).
    """
    dtypes = dict(exported.io.inputs)
    for spec in source.input_signature:
        dtypes.setdefault(spec.name, spec.dtype.as_numpy_dtype().dtype.name)
    batch_sizes = int_tuple(ctx.option("batch_sizes", DEFAULT_BATCH_SIZES), "batch_sizes")
    lengths = int_tuple(ctx.option("sequence_lengths", DEFAULT_SEQUENCE_LENGTHS), "sequence_lengths")
    usable = [length for length in lengths if length <= source.max_sequence_length] or [source.max_sequence_length]
    return dummy_inputs(source.roles(), dtypes, vocab_size=source.vocab_size, pad_token_id=source.pad_token_id,
                        batch_sizes=batch_sizes, sequence_lengths=usable)
