"""Dummy feeds: captions and images in several (text batch, image batch, sequence) combinations.

CLIP rows are padded: row i keeps ``valid_lengths`` tokens (row 0 full), ``bos ... eos`` then the
pad id, with the mask zero over the padding; the text tower pools at the end-of-text token, so
every output row is a valid one. SigLIP's convention is ``padding="max_length"`` with no mask:
its rows are ids then pad ids up to the sequence length (the pooled last position is a pad).
"""

from __future__ import annotations

import numpy as np

from tfopt.feeds import int_tuple, lengths_within, valid_lengths
from tfopt.results import ExportResult, RunContext

from .cache import source_model
from .models import SourceModel

# (text batch, image batch, sequence): batches that differ both ways, two lengths.
DEFAULT_CASES = ((1, 1, 8), (3, 2, 8), (2, 4, 16))


def text_feed(source: SourceModel, batch: int, sequence: int, *, rng: np.random.Generator, padded: bool = True) -> dict:
    """``input_ids`` (+ ``attention_mask`` for CLIP) for ``batch`` captions of ``sequence`` tokens."""
    lengths = valid_lengths(batch, sequence) if padded else np.full(batch, sequence)
    if not source.takes_mask:  # SigLIP: content then pads to max_length; the shortest rows keep >= 1 id
        lengths = np.maximum(lengths - (sequence // 4 if padded else 0), 1)
    special = [token for token in (source.bos_token_id, source.eos_token_id, source.pad_token_id) if token is not None]
    ids = rng.choice(np.setdiff1d(np.arange(source.vocab_size), special), size=(batch, sequence))  # no special id inside
    positions = np.arange(sequence)[None, :]
    ids = np.where(positions < lengths[:, None], ids, source.pad_token_id)
    feed = {}
    if source.takes_mask:
        if source.bos_token_id is not None:
            ids[:, 0] = source.bos_token_id
        if source.eos_token_id is not None:
            ids[np.arange(batch), lengths - 1] = source.eos_token_id
        feed["attention_mask"] = (positions < lengths[:, None]).astype(np.int64)
    feed["input_ids"] = ids.astype(np.int64)
    return {name: feed[name] for name in ("input_ids", "attention_mask") if name in feed}


def image_feed(source: SourceModel, batch: int, *, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((batch, source.num_channels, source.image_size, source.image_size)).astype(np.float32)


def feed_for(source: SourceModel, text_batch: int, image_batch: int, sequence: int, *, seed: int = 0, padded: bool = True) -> dict:
    rng = np.random.default_rng([seed, text_batch, image_batch, sequence])
    return {**text_feed(source, text_batch, sequence, rng=rng, padded=padded), "pixel_values": image_feed(source, image_batch, rng=rng)}


def cases_from(ctx: RunContext, source: SourceModel, batch_option: str, length_option: str, default) -> list[tuple[int, int, int]]:
    """The options' grid, or ``default``: batch b pairs b images with b + 1 captions (the two axes differ)."""
    if ctx.option(batch_option) is None and ctx.option(length_option) is None:
        return [case for case in default if case[2] <= source.max_positions]
    batches = int_tuple(ctx.option(batch_option, (1, 2)), batch_option)
    lengths = lengths_within(ctx.option(length_option, (8,)), length_option, source.max_positions, source.name)
    return [(batch + 1, batch, length) for batch in batches for length in lengths]


def dummy_inputs_for(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    """The ``make_dummy_inputs`` hook: DEFAULT_CASES, or ``batch_sizes`` x ``sequence_lengths``."""
    source = source_model(ctx)
    return [feed_for(source, *case) for case in cases_from(ctx, source, "batch_sizes", "sequence_lengths", DEFAULT_CASES)]
