"""The GPT-2s trained here on the standard library's docstrings (:mod:`tfopt.textmodel` trains and caches them).

``stdlib-gpt2`` is what quantization is judged on; ``stdlib-gpt2-tiny`` trains in seconds for
tests. Both are byte-level (vocabulary: the 256 byte values), newline as BOS/EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tfopt import textmodel
from tfopt.errors import TfoptError
from tfopt.textmodel import heldout_bytes, training_bytes  # noqa: F401  (the adapter's names for the text)


@dataclass(frozen=True)
class TextModelSpec:
    """Shape and training budget of one trained model."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    steps: int
    batch_size: int
    sequence_length: int
    learning_rate: float = 3e-3
    seed: int = 20261205

    @property
    def budget(self) -> textmodel.TrainingBudget:
        return textmodel.TrainingBudget(self.steps, self.batch_size, self.sequence_length, self.learning_rate, self.seed)


TEXT_MODELS = {
    # ~0.8M parameters, ~4 minutes on one core of the development machine: held-out perplexity ~5 per byte.
    "stdlib-gpt2": TextModelSpec(n_layer=4, n_embd=128, n_head=4, n_positions=256, steps=700, batch_size=32, sequence_length=128),
    # For tests: trained in ~10-20 s, already far from flat (the byte statistics of English and code).
    "stdlib-gpt2-tiny": TextModelSpec(n_layer=2, n_embd=64, n_head=4, n_positions=128, steps=150, batch_size=16, sequence_length=64),
}


def config_for(spec: TextModelSpec):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=256, n_positions=spec.n_positions, n_embd=spec.n_embd, n_layer=spec.n_layer, n_head=spec.n_head,
        bos_token_id=textmodel.NEWLINE, eos_token_id=textmodel.NEWLINE, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )


def trained_model(name: str, *, attn_implementation: str = "sdpa", progress: Callable[[str], None] | None = None):
    """The trained GPT2LMHeadModel ``name`` (a key of :data:`TEXT_MODELS`), from the cache or trained now."""
    from transformers import GPT2LMHeadModel

    if name not in TEXT_MODELS:
        raise TfoptError(f"unknown text model {name!r}; known: {', '.join(TEXT_MODELS)}")
    spec = TEXT_MODELS[name]
    return textmodel.trained_model(
        name, "gpt2", config_for(spec), GPT2LMHeadModel, spec.budget, attn_implementation=attn_implementation, progress=progress
    )
