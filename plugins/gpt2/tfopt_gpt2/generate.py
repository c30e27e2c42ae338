"""Greedy generation for GPT-2: :mod:`tfopt.generation`'s loop over the ONNX decoder step, and transformers' reference.

Kept as the adapter's names (``greedy_generate_onnx``, ``greedy_generate_torch``,
``example_prompts`` taking a :class:`SourceModel`); the loop itself, with IO binding and
sampling, is shared with every decoder adapter.
"""

from __future__ import annotations

import numpy as np

from tfopt import generation
from tfopt.errors import TfoptError

from .models import SourceModel


def greedy_generate_onnx(
    model_path, input_ids, attention_mask=None, max_new_tokens: int = 16, *, eos_token_id: int | None = None
) -> np.ndarray:
    """The ``max_new_tokens`` greedy tokens (batch, max_new_tokens) of the ONNX decoder at ``model_path`` (or a session)."""
    return generation.generate_onnx(model_path, input_ids, attention_mask, max_new_tokens, eos_token_id=eos_token_id)


def greedy_generate_torch(model, input_ids, attention_mask=None, max_new_tokens: int = 16, *, eos_token_id: int | None = None) -> np.ndarray:
    """transformers' greedy ``generate`` of a GPT2LMHeadModel (or the run's :class:`SourceModel`)."""
    model = model.model if isinstance(model, SourceModel) else model
    if not hasattr(model, "lm_head"):
        raise TfoptError("greedy generation needs a GPT2LMHeadModel (this model has no LM head)")
    return generation.generate_torch(model, input_ids, attention_mask, max_new_tokens, eos_token_id=eos_token_id)


def example_prompts(source: SourceModel, batch_size: int, prompt_length: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random prompts of ``source``'s vocabulary, left-padded (:func:`tfopt.generation.example_prompts`)."""
    return generation.example_prompts(source.vocab_size, batch_size, prompt_length, seed=seed)
