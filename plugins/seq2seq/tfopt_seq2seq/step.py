"""The two graphs as PyTorch modules (what is exported, and the reference verify compares with), and their feeds.

transformers 5 takes the cache only as an ``EncoderDecoderCache`` object, which no exporter
accepts as an input, so both wrappers take and return flat tensors named as
:mod:`tfopt.encoder_decoder` states. The encoder wrapper runs the decoder stack once on the
start token with an empty cache only to read the cross-attention keys/values it fills: the
exporter keeps just the projections that produce them (everything else is dead code), and the
family's own code decides how they are computed.
"""

from __future__ import annotations

import numpy as np

from tfopt import encoder_decoder as names

from .models import SourceModel


def encoder_inputs(source: SourceModel) -> list[str]:
    return [names.INPUT_FEATURES] if source.spec.audio else [names.INPUT_IDS, names.ATTENTION_MASK]


def encoder_outputs(source: SourceModel) -> list[str]:
    return [names.ENCODER_HIDDEN, *map(names.present_name, names.cross_past_names(source.decoder_layers))]


def decoder_inputs(source: SourceModel) -> list[str]:
    mask = [names.ENCODER_MASK] if source.spec.encoder_mask else []
    layers = source.decoder_layers
    return [names.INPUT_IDS, *mask, *names.self_past_names(layers), *names.cross_past_names(layers)]


def decoder_outputs(source: SourceModel) -> list[str]:
    return [names.LOGITS, *map(names.present_name, names.self_past_names(source.decoder_layers))]


def _modules():
    import torch
    from transformers import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    class EncoderStep(torch.nn.Module):
        """source -> encoder_hidden_states and each decoder layer's cross keys/values."""

        def __init__(self, source: SourceModel):
            super().__init__()
            self.model, self.audio, self.start = source.model, source.spec.audio, source.decoder_start_token_id

        def forward(self, *inputs):
            if self.audio:
                (features,), mask = inputs, None
                hidden = self.model.get_encoder()(input_features=features).last_hidden_state
            else:
                ids, mask = inputs
                hidden = self.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            start = torch.full((hidden.shape[0], 1), self.start, dtype=torch.int64)
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            extra = {} if mask is None else {"encoder_attention_mask": mask}
            self.model.get_decoder()(input_ids=start, encoder_hidden_states=hidden, past_key_values=cache, use_cache=True, **extra)
            cross = [t for layer in cache.cross_attention_cache.layers for t in (layer.keys, layer.values)]
            return (hidden, *cross)

    class DecoderStep(torch.nn.Module):
        """new tokens, source mask, self and cross past -> logits and the grown self cache."""

        def __init__(self, source: SourceModel):
            super().__init__()
            self.model, self.masked = source.model, source.spec.encoder_mask
            self.layers, self.width = source.decoder_layers, source.width

        def forward(self, input_ids, *rest):
            mask, rest = (rest[0], rest[1:]) if self.masked else (None, rest)
            pairs = [(rest[2 * i], rest[2 * i + 1]) for i in range(len(rest) // 2)]
            cache = EncoderDecoderCache(DynamicCache(pairs[: self.layers]), DynamicCache(pairs[self.layers :]))
            key = pairs[self.layers][0]  # the cross keys say the source's batch and length
            hidden = key.new_zeros((key.shape[0], key.shape[2], self.width))  # unread: the cache holds the keys/values
            extra = {} if mask is None else {"attention_mask": mask}
            out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), decoder_input_ids=input_ids,
                             past_key_values=cache, use_cache=True, **extra)
            presents = [t for layer in out.past_key_values.self_attention_cache.layers for t in (layer.keys, layer.values)]
            return (out.logits, *presents)

    return EncoderStep, DecoderStep


def encoder_step(source: SourceModel):
    return _modules()[0](source).eval()


def decoder_step(source: SourceModel):
    return _modules()[1](source).eval()


def source_length(source: SourceModel, frames: int) -> int:
    """Whisper's encoder halves the mel frames (stride-2 conv); text sources keep their length."""
    return frames // 2 if source.spec.audio else frames


def encoder_feed(source: SourceModel, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random tokens with the rows after the first right-padded by a random amount (a tokenizer's padding),
    or random log-mel features (Whisper's input is always ``2 * max_source_positions`` frames)."""
    if source.spec.audio:
        frames = 2 * source.max_source_positions
        return {names.INPUT_FEATURES: rng.standard_normal((batch, source.num_mel_bins, frames)).astype(np.float32)}
    lengths = np.full(batch, length)
    lengths[1:] = rng.integers(max(1, length // 2), length + 1, size=batch - 1)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(3, source.vocab_size, size=(batch, length)).astype(np.int64)
    return {names.INPUT_IDS: np.where(mask.astype(bool), ids, source.pad_token_id), names.ATTENTION_MASK: mask}


def decoder_feed(source: SourceModel, encoder: dict[str, np.ndarray], cross: list[np.ndarray], past: int, new: int,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A decoding step: ``new`` random tokens after a random self cache of ``past`` positions, over real cross keys/values."""
    batch = cross[0].shape[0]
    feed = {names.INPUT_IDS: rng.integers(3, source.vocab_size, size=(batch, new)).astype(np.int64)}
    if source.spec.encoder_mask:
        feed[names.ENCODER_MASK] = encoder[names.ATTENTION_MASK]
    for name in names.self_past_names(source.decoder_layers):
        feed[name] = rng.standard_normal((batch, source.heads, past, source.head_size)).astype(np.float32)
    feed.update(zip(names.cross_past_names(source.decoder_layers), cross))
    return feed


def run_torch(module, input_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        outputs = module(*(torch.from_numpy(np.ascontiguousarray(feed[name])) for name in input_names))
    return [value.float().numpy() for value in outputs]
