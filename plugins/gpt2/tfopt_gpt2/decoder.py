"""GPT-2 as one decoding step with flat tensors in and out: the shape of the exported graph.

transformers 5 takes the past only as a ``Cache`` object, which no exporter accepts as an
input. :class:`DecoderStep` takes the past as one tensor per layer and per key/value,
builds the ``DynamicCache`` inside ``forward`` and returns the new cache flat again, so
both exporters see plain tensors. The same module, run eagerly, is the PyTorch reference
for verification, benchmarks and generation: one definition of "what the graph computes".
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from .models import SourceModel

INPUT_IDS, ATTENTION_MASK, POSITION_IDS = "input_ids", "attention_mask", "position_ids"


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def input_names(num_layers: int) -> list[str]:
    return [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *past_names(num_layers)]


def output_names(source: SourceModel) -> list[str]:
    return [source.output_name, *present_names(source.num_layers)]


class DecoderStep(torch.nn.Module):
    """input_ids (B,S), attention_mask (B,P+S), position_ids (B,S), past (B,N,P,H) per layer ->
    logits (B,S,V) or last_hidden_state (B,S,D), then present (B,N,P+S,H) per layer."""

    def __init__(self, model: PreTrainedModel, num_layers: int, lm_head: bool):
        super().__init__()
        self.model = model
        self.num_layers = num_layers
        self.lm_head = lm_head

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)])
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        first = outputs.logits if self.lm_head else outputs.last_hidden_state
        presents = []
        for layer in outputs.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (first, *presents)


def decoder_step(source: SourceModel) -> DecoderStep:
    # eval() on the wrapper: exporting a module in train mode flips the inner model to train mode
    return DecoderStep(source.model, source.num_layers, source.lm_head).eval()


def torch_feed(feed: dict[str, np.ndarray], num_layers: int) -> tuple[torch.Tensor, ...]:
    """A feed as the positional tensors DecoderStep takes (ids as int64, past as float32)."""
    tensors = [torch.from_numpy(np.asarray(feed[name], dtype=np.int64)) for name in (INPUT_IDS, ATTENTION_MASK, POSITION_IDS)]
    tensors += [torch.from_numpy(np.asarray(feed[name], dtype=np.float32)) for name in past_names(num_layers)]
    return tuple(tensors)


def run_torch(source: SourceModel, feed: dict[str, np.ndarray], step: DecoderStep | None = None) -> dict[str, np.ndarray]:
    """The PyTorch outputs for one feed, by output name."""
    step = step or decoder_step(source)
    with torch.inference_mode():
        outputs = step(*torch_feed(feed, source.num_layers))
    return {name: value.float().numpy() for name, value in zip(output_names(source), outputs)}
