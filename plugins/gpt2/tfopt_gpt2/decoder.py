"""GPT-2 as one decoding step with flat tensors in and out (:mod:`tfopt.causal_lm`'s DecoderStep).

The same module, run eagerly, is the PyTorch reference for verification, benchmarks and
generation: one definition of "what the graph computes".
"""

from __future__ import annotations

import numpy as np
import torch

from tfopt import causal_lm
from tfopt.causal_lm import (  # noqa: F401  (the adapter's modules take the names from here)
    ATTENTION_MASK,
    INPUT_IDS,
    POSITION_IDS,
    input_names,
    past_names,
    present_names,
    torch_feed,
)

from .models import SourceModel


def output_names(source: SourceModel) -> list[str]:
    return [source.output_name, *present_names(source.num_layers)]


def decoder_step(source: SourceModel):
    return causal_lm.decoder_step(source.model, source.num_layers, source.lm_head)


def run_torch(source: SourceModel, feed: dict[str, np.ndarray], step=None) -> dict[str, np.ndarray]:
    """The PyTorch outputs for one feed, by output name."""
    step = step or decoder_step(source)
    with torch.inference_mode():
        outputs = step(*torch_feed(feed, source.num_layers))
    return {name: value.float().numpy() for name, value in zip(output_names(source), outputs)}
