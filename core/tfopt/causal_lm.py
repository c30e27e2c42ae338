"""One decoding step of a Hugging Face causal LM, the shape every decoder adapter exports.

transformers 5 takes the past only as a ``Cache`` object, which no exporter accepts as an
input. :func:`decoder_step` wraps a model so that it takes the past as one tensor per layer
and per key/value (``past_key_values.{i}.key/value``, [batch, kv_heads, past, head_size]),
builds the ``DynamicCache`` inside ``forward`` and returns the new cache flat again
(``present.{i}.key/value``). The same module, run eagerly, is the PyTorch reference for
verification and generation. The feeds here are what a generation loop sends: left-padded
masks over past + new tokens, positions counted from the mask.

Shared by the gpt2 and llama adapters (and third-party decoders); torch and transformers
are imported only by :func:`decoder_step`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

INPUT_IDS, ATTENTION_MASK, POSITION_IDS = "input_ids", "attention_mask", "position_ids"


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def input_names(num_layers: int) -> list[str]:
    return [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *past_names(num_layers)]


@dataclass(frozen=True)
class StepShape:
    batch_size: int
    past_length: int
    sequence_length: int

    @property
    def total_length(self) -> int:
        return self.past_length + self.sequence_length


def parse_step_shapes(value, option: str) -> list[StepShape]:
    """An option's ``batch,past,new_tokens;...`` triples (batch and new tokens >= 1), or a one-line error."""
    from .errors import TfoptError

    problem = f"{option} must be batch,past,new_tokens triples (batch and new tokens >= 1), ';'-separated; got {value!r}"
    try:
        triples = [tuple(int(n) for n in part.split(",")) for part in str(value).split(";") if part.strip()]
    except ValueError:
        raise TfoptError(problem) from None
    if not triples or any(len(t) != 3 or min(t) < 0 or t[0] < 1 or t[2] < 1 for t in triples):
        raise TfoptError(problem)
    return [StepShape(*t) for t in triples]


def position_ids_for(attention_mask: np.ndarray, sequence_length: int) -> np.ndarray:
    """Positions of the last ``sequence_length`` slots: count of real tokens before each, padding at 0."""
    positions = np.cumsum(attention_mask, axis=1) - 1
    return np.clip(positions, 0, None)[:, -sequence_length:]


def left_padded_mask(batch_size: int, total_length: int, rng: np.random.Generator) -> np.ndarray:
    """Row 0 unpadded; every other row a random amount of left padding, keeping at least its last slot."""
    padding = rng.integers(0, total_length, size=batch_size)
    padding[0] = 0
    return (np.arange(total_length)[None, :] >= padding[:, None]).astype(np.int64)


def step_feed(
    shape: StepShape,
    *,
    num_layers: int,
    num_heads: int,
    head_size: int,
    vocab_size: int,
    rng: np.random.Generator,
    int_dtype=np.int64,
    padded: bool = True,
) -> dict[str, np.ndarray]:
    """One feed: random ids, a left-padded mask (``padded=False``: all ones), positions, random-normal past.

    ``num_heads`` is the number of key/value heads the cache holds (fewer than the query
    heads under grouped-query attention).
    """
    batch, past, sequence = shape.batch_size, shape.past_length, shape.sequence_length
    if padded:
        mask = left_padded_mask(batch, shape.total_length, rng)
    else:
        mask = np.ones((batch, shape.total_length), dtype=np.int64)
    feed = {
        INPUT_IDS: rng.integers(0, vocab_size, size=(batch, sequence)).astype(int_dtype),
        ATTENTION_MASK: mask.astype(int_dtype),
        POSITION_IDS: position_ids_for(mask, sequence).astype(int_dtype),
    }
    for name in past_names(num_layers):
        feed[name] = rng.standard_normal((batch, num_heads, past, head_size)).astype(np.float32)
    return feed


@functools.lru_cache(maxsize=1)
def _decoder_step_class():
    import torch
    from transformers import DynamicCache

    class DecoderStep(torch.nn.Module):
        """input_ids (B,S), attention_mask (B,P+S), position_ids (B,S), past (B,N,P,H) per layer ->
        logits (B,S,V) or last_hidden_state (B,S,D), then present (B,N,P+S,H) per layer."""

        def __init__(self, model, num_layers: int, lm_head: bool):
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

    return DecoderStep


def decoder_step(model, num_layers: int, lm_head: bool):
    """``model`` as a :class:`DecoderStep` module in eval mode (exporting a module in train mode
    flips the inner model to train mode)."""
    return _decoder_step_class()(model, num_layers, lm_head).eval()


def torch_feed(feed: dict[str, np.ndarray], num_layers: int) -> tuple:
    """A feed as the positional tensors a DecoderStep takes (ids as int64, past as float32)."""
    import torch

    tensors = [torch.from_numpy(np.asarray(feed[name], dtype=np.int64)) for name in (INPUT_IDS, ATTENTION_MASK, POSITION_IDS)]
    tensors += [torch.from_numpy(np.asarray(feed[name], dtype=np.float32)) for name in past_names(num_layers)]
    return tuple(tensors)
