"""Dummy images: ``pixel_values`` at the model's own size, several batch sizes, reproducible.

Images of one size have no axis besides the batch, so ``sequence_lengths`` and ``axis_sizes``
do not apply and are refused (a silently ignored option is a wrong run).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from tfopt.errors import TfoptError
from tfopt.feeds import int_tuple
from tfopt.results import ExportResult, RunContext

from .cache import source_model
from .export import INPUT_NAME

DEFAULT_BATCH_SIZES = (1, 2, 3)


def refuse_sequence_options(ctx: RunContext, *options: str) -> None:
    for option in options:
        if ctx.option(option) is not None:
            raise TfoptError(
                f"{option} does not apply: the vision adapter feeds images of the model's one size; "
                "--batch-sizes (bench_batch_sizes) sizes the batch"
            )


def pixel_feeds(
    batch_sizes: Iterable[int], image_size: int, num_channels: int = 3, *, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """One feed per batch size: normalized-image-like values (standard normal), float32."""
    rng = np.random.default_rng(seed)
    return [
        {INPUT_NAME: rng.standard_normal((batch, num_channels, image_size, image_size)).astype(np.float32)}
        for batch in batch_sizes
    ]


def dummy_inputs_for(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    """The ``make_dummy_inputs`` hook: ``batch_sizes`` (default 1, 2, 3) at the model's image size."""
    refuse_sequence_options(ctx, "sequence_lengths", "axis_sizes")
    source = source_model(ctx)
    batch_sizes = int_tuple(ctx.option("batch_sizes", DEFAULT_BATCH_SIZES), "batch_sizes")
    return pixel_feeds(batch_sizes, source.image_size, source.num_channels)
