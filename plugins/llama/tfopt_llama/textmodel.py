"""Llama-architecture models trained here on the standard library's docstrings (:mod:`tfopt.textmodel`).

Random weights make next-token agreement and perplexity meaningless, and no weights can be
downloaded here, so quantization is judged on these: byte-level (vocabulary: the 256 byte
values), RMSNorm, rotary embeddings, grouped-query attention (2 key/value heads for 4 query
heads), a gated SiLU MLP -- the structure of the Llama family, at a size that trains in
minutes (``stdlib-llama``) or seconds (``stdlib-llama-tiny``, for tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tfopt import textmodel
from tfopt.errors import TfoptError


@dataclass(frozen=True)
class TextModelSpec:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    positions: int
    budget: textmodel.TrainingBudget


TEXT_MODELS = {
    # ~1.2M parameters, a few minutes on the development machine
    "stdlib-llama": TextModelSpec(4, 128, 4, 2, 352, 256, textmodel.TrainingBudget(steps=700, batch_size=32, sequence_length=128)),
    # for tests: seconds, already far from flat
    "stdlib-llama-tiny": TextModelSpec(2, 64, 4, 2, 176, 128, textmodel.TrainingBudget(steps=150, batch_size=16, sequence_length=64)),
}


def config_for(spec: TextModelSpec):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256, hidden_size=spec.hidden, intermediate_size=spec.intermediate, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, max_position_embeddings=spec.positions,
        bos_token_id=textmodel.NEWLINE, eos_token_id=textmodel.NEWLINE, tie_word_embeddings=False,
    )


def trained_model(name: str, *, attn_implementation: str = "sdpa", progress: Callable[[str], None] | None = None):
    """The trained LlamaForCausalLM ``name`` (a key of :data:`TEXT_MODELS`), from the cache or trained now."""
    from transformers import LlamaForCausalLM

    if name not in TEXT_MODELS:
        raise TfoptError(f"unknown text model {name!r}; known: {', '.join(TEXT_MODELS)}")
    spec = TEXT_MODELS[name]
    return textmodel.trained_model(
        name, "llama", config_for(spec), LlamaForCausalLM, spec.budget, attn_implementation=attn_implementation, progress=progress
    )


def calibration_sources() -> dict[str, int]:
    """The sources that carry calibration text (GPTQ rounding), with their position counts."""
    return {name: spec.positions for name, spec in TEXT_MODELS.items()}
