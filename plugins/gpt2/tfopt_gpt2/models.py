"""Where the PyTorch GPT-2 comes from: built-in random configs, a local directory, or a hub id.

No real GPT-2 weights can be had offline (nothing on PyPI ships them), so the default
source is ``tiny-gpt2``, a random-weight model; ``gpt2-small-random`` has GPT-2 small's
exact shape for benchmarks. Every source ends as a :class:`SourceModel`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    PreTrainedModel,
)

from tfopt.errors import TfoptError, first_line
from tfopt.hub import load_from_hub, looks_like_hub_id, read_local_config
from tfopt.results import ModelInfo
from tfopt.torch_kit import no_progress_bar, perturb_vector_params

DEFAULT_SOURCE = "tiny-gpt2"
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
RANDOM_SEED = 20261123


@dataclass(frozen=True)
class BuiltinModel:
    """A random-weight model this adapter can build without any download."""

    config: Callable[[], GPT2Config]
    lm_head: bool


def _tiny(**shape) -> Callable[[], GPT2Config]:
    # initializer_range 0.2, not GPT-2's 0.02: at 0.02 a tiny random model's logits are nearly
    # flat (top-2 gap ~0.02) and greedy decoding repeats one token from the second step on,
    # so a generation test could not tell a broken cache from a working one.
    # BOS/EOS inside the tiny vocabulary: GPT-2's 50256 is not, and transformers warns about it on every load.
    last_id = shape["vocab_size"] - 1
    return lambda: GPT2Config(
        n_positions=128, n_head=4, initializer_range=0.2, bos_token_id=last_id, eos_token_id=last_id, **shape
    )


# Tiny shapes differ from one another (layers, hidden size, vocab) so shape bugs show.
BUILTIN_MODELS = {
    "tiny-gpt2": BuiltinModel(_tiny(vocab_size=160, n_embd=32, n_layer=3), lm_head=True),
    "tiny-gpt2-base": BuiltinModel(_tiny(vocab_size=144, n_embd=48, n_layer=2), lm_head=False),
    "tiny-distilgpt2": BuiltinModel(_tiny(vocab_size=200, n_embd=64, n_layer=2), lm_head=True),
    # GPT-2 small's shape (12 layers, hidden 768, 12 heads, vocab 50257) with random weights.
    "gpt2-small-random": BuiltinModel(lambda: GPT2Config(), lm_head=True),
}


@dataclass
class SourceModel:
    """The loaded PyTorch model in eval mode and the facts about it the other stages need."""

    model: PreTrainedModel  # GPT2LMHeadModel or GPT2Model
    name: str  # what the user asked for: "tiny-gpt2", a directory, a hub id
    info: ModelInfo
    lm_head: bool
    vocab_size: int
    max_positions: int  # past + sequence must stay below this (the position table's size)

    @property
    def num_layers(self) -> int:
        return self.info.num_layers

    @property
    def num_heads(self) -> int:
        return self.info.num_heads

    @property
    def head_size(self) -> int:
        return self.info.hidden_size // self.info.num_heads

    @property
    def output_name(self) -> str:
        return "logits" if self.lm_head else "last_hidden_state"


def random_model(
    config: GPT2Config, *, lm_head: bool = True, seed: int = RANDOM_SEED, attn_implementation: str = "sdpa"
) -> PreTrainedModel:
    """A random-weight GPT-2 for ``config``, the same for the same seed."""
    check_attn(attn_implementation)
    factory = AutoModelForCausalLM if lm_head else AutoModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory.from_config(config, attn_implementation=attn_implementation)
    perturb_vector_params(model, seed=seed)
    return model.eval()


def load_source(
    source: str | None, *, attn_implementation: str = "sdpa", lm_head: bool | None = None, progress=None
) -> SourceModel:
    """Load what ``source`` names (None: ``tiny-gpt2``); every failure is a one-line :class:`TfoptError`.

    ``lm_head`` picks GPT2LMHeadModel (True) or GPT2Model (False) for directories and hub
    ids; None follows the checkpoint's ``architectures``.
    """
    check_attn(attn_implementation)
    name = source or DEFAULT_SOURCE
    if name in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[name]
        head = builtin.lm_head if lm_head is None else lm_head
        return describe(random_model(builtin.config(), lm_head=head, attn_implementation=attn_implementation), name)
    from .textmodel import TEXT_MODELS, trained_model

    if name in TEXT_MODELS:  # trained here on real text (minutes once, then cached)
        if lm_head is False:
            raise TfoptError(f"{name}: a trained language model; it has an LM head (lm_head=false is for GPT2Model sources)")
        return describe(trained_model(name, attn_implementation=attn_implementation, progress=progress), name)
    path = Path(name).expanduser()
    if path.exists():
        return _from_directory(path, attn_implementation, lm_head)
    if looks_like_hub_id(name):
        return _from_hub(name, attn_implementation, lm_head)
    raise TfoptError(
        f"{name}: no such model directory (or use a hub id, or one of: {', '.join([*BUILTIN_MODELS, *TEXT_MODELS])})"
    )


def describe(model: PreTrainedModel, name: str) -> SourceModel:
    """Wrap a GPT-2 model with the facts later stages need; other families are refused."""
    config = model.config
    if config.model_type != "gpt2":
        raise TfoptError(f"{name}: model type {config.model_type!r} is not handled by the gpt2 adapter")
    return SourceModel(
        model=model.eval(),
        name=name,
        info=ModelInfo(model_type="gpt2", num_heads=config.n_head, hidden_size=config.n_embd, num_layers=config.n_layer),
        lm_head=isinstance(model, GPT2LMHeadModel),
        vocab_size=config.vocab_size,
        max_positions=config.n_positions,
    )


def check_attn(attn_implementation: str) -> None:
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise TfoptError(f"unknown attn_implementation {attn_implementation!r}; known: {', '.join(ATTN_IMPLEMENTATIONS)}")


def _model_class(config, lm_head: bool | None):
    if lm_head is None:
        lm_head = "GPT2LMHeadModel" in (getattr(config, "architectures", None) or [])
    return GPT2LMHeadModel if lm_head else GPT2Model


def _from_directory(path: Path, attn_implementation: str, lm_head: bool | None) -> SourceModel:
    config = read_local_config(path)
    if config.model_type != "gpt2":  # before loading weights we would not use
        raise TfoptError(f"{path}: model type {config.model_type!r} is not handled by the gpt2 adapter")
    try:
        with no_progress_bar():
            model = _model_class(config, lm_head).from_pretrained(
                path, local_files_only=True, attn_implementation=attn_implementation
            )
    except Exception as exc:  # missing or corrupt weights
        raise TfoptError(f"{path}: cannot load the model weights ({first_line(exc)})") from None
    return describe(model, str(path))


def _from_hub(repo_id: str, attn_implementation: str, lm_head: bool | None) -> SourceModel:
    def load(cached_only: bool):
        config = AutoConfig.from_pretrained(repo_id, local_files_only=cached_only)
        if config.model_type != "gpt2":
            raise TfoptError(f"{repo_id}: model type {config.model_type!r} is not handled by the gpt2 adapter")
        with no_progress_bar():
            return _model_class(config, lm_head).from_pretrained(
                repo_id, local_files_only=cached_only, attn_implementation=attn_implementation
            )

    return describe(load_from_hub(repo_id, BUILTIN_MODELS, load), repo_id)
