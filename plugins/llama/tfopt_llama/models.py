"""The decoder LLMs the llama adapter takes: built-in tiny configs per family, or a local Hugging Face directory.

A family is data here: its transformers class, its model type for the shared fusion rules
(:mod:`tfopt.graph.model_types`, which state the fused-op counts), and the config of
a tiny random-weight model (2 layers, hidden 64, 4 query heads over 2 key/value heads
where the family groups them). No weights can be downloaded here; the tiny models' norm
weights and biases are randomized so that an exporter cannot merge equal initializers
(transformers starts them all at 1 or 0) and a fusion that drops one shows in the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tfopt.errors import TfoptError
from tfopt.results import ModelInfo

TINY_SHAPE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, vocab_size=256, max_position_embeddings=128,
)


@dataclass(frozen=True)
class Family:
    config_class: str  # transformers class names
    model_class: str
    model_type: str  # one of tfopt.graph.model_types.MODEL_TYPES (a decoder LLM)
    extra: tuple = ()  # (key, value) pairs of the tiny config beyond TINY_SHAPE


FAMILIES = {
    "llama": Family("LlamaConfig", "LlamaForCausalLM", "llama"),
    "mistral": Family("MistralConfig", "MistralForCausalLM", "mistral", (("sliding_window", 8),)),
    "qwen2": Family("Qwen2Config", "Qwen2ForCausalLM", "qwen2"),
    "qwen3": Family("Qwen3Config", "Qwen3ForCausalLM", "qwen3"),
    "phi3": Family("Phi3Config", "Phi3ForCausalLM", "phi3", (("partial_rotary_factor", 0.5), ("pad_token_id", 0))),
    "gemma": Family("GemmaConfig", "GemmaForCausalLM", "gemma"),
    "gemma2": Family("Gemma2Config", "Gemma2ForCausalLM", "gemma2", (("sliding_window", 8), ("query_pre_attn_scalar", 16))),
}
# Hugging Face's config.model_type -> family (the directory's config says which it is).
_HF_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3", "gemma": "gemma", "gemma2": "gemma2"}
BUILTIN_PREFIX = "tiny-"
DEFAULT_SOURCE = "tiny-llama"
# Families whose attention transformers runs only eagerly (Gemma 2's soft-capping has no sdpa path).
_EAGER_ONLY = ("gemma2",)


@dataclass
class SourceModel:
    name: str
    family: str
    model: object  # transformers PreTrainedModel, eval mode
    num_layers: int
    num_kv_heads: int
    head_size: int
    vocab_size: int
    max_positions: int

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(model_type=FAMILIES[self.family].model_type, num_layers=self.num_layers)


def builtin_names() -> list[str]:
    return [BUILTIN_PREFIX + name for name in FAMILIES]


def _attn(family: str, requested: str | None) -> str:
    attn = requested or ("eager" if family in _EAGER_ONLY else "sdpa")
    if attn not in ("sdpa", "eager"):
        raise TfoptError(f"unknown attn_implementation {attn!r}; known: sdpa, eager")
    if attn == "sdpa" and family in _EAGER_ONLY:
        raise TfoptError(f"{family} runs its attention eagerly only in transformers (attn_implementation=eager)")
    return attn


def _randomized(model, seed: int):
    """Norm weights and biases off their initial 1/0, deterministically."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:
                parameter.copy_(parameter + 0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def _describe(name: str, family: str, model) -> SourceModel:
    config = model.config
    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return SourceModel(
        name=name, family=family, model=model.eval(), num_layers=config.num_hidden_layers,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_size=head_size, vocab_size=config.vocab_size, max_positions=config.max_position_embeddings,
    )


def load_source(source: str | None, attn_implementation: str | None = None, *, seed: int = 0, progress=None) -> SourceModel:
    """``tiny-<family>`` (random weights), ``stdlib-llama[-tiny]`` (trained here), or a local Hugging Face
    directory of a supported family."""
    import torch
    import transformers

    from .textmodel import TEXT_MODELS, trained_model

    source = source or DEFAULT_SOURCE
    if source in TEXT_MODELS:  # trained here on real text (minutes once, then cached)
        return _describe(source, "llama", trained_model(source, attn_implementation=_attn("llama", attn_implementation), progress=progress))
    if source.startswith(BUILTIN_PREFIX) and source[len(BUILTIN_PREFIX):] in FAMILIES:
        family = source[len(BUILTIN_PREFIX):]
        spec = FAMILIES[family]
        config = getattr(transformers, spec.config_class)(**TINY_SHAPE, **dict(spec.extra))
        config._attn_implementation = _attn(family, attn_implementation)
        torch.manual_seed(seed)
        model = getattr(transformers, spec.model_class)(config)
        return _describe(source, family, _randomized(model, seed))
    path = Path(source)
    if not (path / "config.json").is_file():
        raise TfoptError(
            f"unknown source {source!r}: a Hugging Face model directory (with config.json) or one of "
            f"{', '.join([*builtin_names(), *TEXT_MODELS])}"
        )
    config = transformers.AutoConfig.from_pretrained(path)
    family = _HF_TYPES.get(config.model_type)
    if family is None:
        raise TfoptError(f"{source}: model type {config.model_type!r} is not one the llama adapter takes ({', '.join(FAMILIES)})")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation=_attn(family, attn_implementation))
    return _describe(path.name, family, model)
