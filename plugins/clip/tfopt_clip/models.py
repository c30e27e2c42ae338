"""Where the two-tower model comes from: built-in tiny configs, a local directory, or a hub id.

Every source ends as a :class:`SourceModel`: the Hugging Face CLIPModel or SiglipModel in eval
mode plus what the other stages need (ModelInfo with the exact fused counts, the image size,
the text tower's vocabulary, special tokens and position table).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from tfopt.errors import TfoptError, first_line
from tfopt.hub import load_from_hub, looks_like_hub_id, read_local_config
from tfopt.results import ModelInfo
from tfopt.torch_kit import no_progress_bar

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
DEFAULT_SOURCE = "tiny-clip"
TINY_SEED = 20261125
PERTURB_SCALE = 0.02


@dataclass(frozen=True)
class Family:
    """One supported architecture: its model class, tfopt's model type and whether the text tower takes a mask."""

    model_class: str
    model_type: str  # the fused counts' name (ModelInfo.model_type)
    takes_mask: bool  # CLIP: attention_mask; SigLIP: text padded to max_length, no mask (its tokenizer returns none)
    gelu: str  # the op the feed-forward's activation fuses to


FAMILIES = {
    "clip": Family("CLIPModel", "clip", takes_mask=True, gelu="QuickGelu"),
    "siglip": Family("SiglipModel", "siglip", takes_mask=False, gelu="FastGelu"),
}

# Small enough to export both towers in seconds: hidden 32 (text) and 48 (vision), 2 layers each,
# 32x32 images in 8x8 patches. CLIP's end of text is the highest id (as in OpenAI's vocabulary),
# so its pooling (argmax of the ids, or the first eos) finds it either way.
_VISION = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=48, intermediate_size=96,
               num_hidden_layers=2, num_attention_heads=4)
_TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=32)
TINY_CONFIGS = {
    "tiny-clip": lambda: transformers.CLIPConfig(
        text_config=dict(_TEXT, bos_token_id=0, pad_token_id=1, eos_token_id=98), vision_config=_VISION, projection_dim=24
    ),
    "tiny-siglip": lambda: transformers.SiglipConfig(
        text_config=dict(_TEXT, bos_token_id=0, pad_token_id=1, eos_token_id=2, projection_size=48), vision_config=_VISION
    ),
}


@dataclass
class SourceModel:
    """The loaded PyTorch model and the facts about it the other stages need."""

    model: PreTrainedModel
    name: str  # what the user asked for: "tiny-clip", a directory, a hub id
    family: Family
    info: ModelInfo
    image_size: int
    num_channels: int
    vocab_size: int
    max_positions: int
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int

    @property
    def takes_mask(self) -> bool:
        return self.family.takes_mask


def family_of(config: PretrainedConfig, name) -> Family:
    family = FAMILIES.get(config.model_type)
    if family is None:
        hint = " (a vision tower alone: --plugin vision)" if config.model_type.endswith("_vision_model") else ""
        raise TfoptError(
            f"{name}: model type {config.model_type!r} is not handled by clip (it handles {', '.join(FAMILIES)}){hint}"
        )
    return family


def random_model(config: PretrainedConfig, *, seed: int = TINY_SEED, attn_implementation: str | None = None) -> PreTrainedModel:
    """A random-weight model for ``config``, the same for the same seed (export and ``tfopt verify DIR`` rebuild it).

    Every parameter gets +0.02*randn: default inits leave biases and LayerNorms constant (the dynamo
    exporter would share one initializer among them, hiding fusion bugs).
    """
    family = family_of(config, config.model_type)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, family.model_class)._from_config(config, **kwargs)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * PERTURB_SCALE)
    return model.eval()


def load_source(source: str | None, *, attn_implementation: str | None = None) -> SourceModel:
    """Load what ``source`` names (None: tiny-clip); every failure is a one-line :class:`TfoptError`."""
    if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise TfoptError(f"unknown attn_implementation {attn_implementation!r}; known: {', '.join(ATTN_IMPLEMENTATIONS)}")
    source = source or DEFAULT_SOURCE
    if source in TINY_CONFIGS:
        return describe(random_model(TINY_CONFIGS[source](), attn_implementation=attn_implementation), source)
    path = Path(source).expanduser()
    if path.exists():
        return _from_directory(path, attn_implementation, name=source)
    if looks_like_hub_id(source):
        return _from_hub(source, attn_implementation)
    raise TfoptError(f"{source}: no such model directory (or use a hub id, or one of: {', '.join(TINY_CONFIGS)})")


def describe(model: PreTrainedModel, name: str) -> SourceModel:
    config = model.config
    family = family_of(config, name)
    text, vision = config.text_config, config.vision_config
    size = vision.image_size
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise TfoptError(f"non-square image size {tuple(size)} is not supported")
        size = size[0]
    return SourceModel(
        model=model.eval(),
        name=name,
        family=family,
        info=model_info(config, family),
        image_size=int(size),
        num_channels=int(getattr(vision, "num_channels", 3)),
        vocab_size=int(text.vocab_size),
        max_positions=int(text.max_position_embeddings),
        bos_token_id=getattr(text, "bos_token_id", None),
        eos_token_id=getattr(text, "eos_token_id", None),
        pad_token_id=int(getattr(text, "pad_token_id", None) or 0),
    )


def expected_counts_of(config: PretrainedConfig, family: Family) -> dict[str, int]:
    """The fused graph's exact counts, per tower, from the config (docs/clip.md).

    - text tower, L_t layers: CLIP's first norm reads the token + position lookups
      (EmbedLayerNormalization 1), the other 2L_t - 1 layer norms and the final norm read a
      residual (SkipLayerNormalization 2L_t). SigLIP's text tower has the same layout.
    - vision tower, L_v layers: CLIP's pre_layrnorm sits between the embeddings and layer 0, so
      layer 0's first norm reads no residual (2L_v - 1); post_layernorm is on the pooled token.
      SigLIP: the patches' first norm reads no residual, the final post_layernorm reads the last
      one (2L_v), and the pooling head's attention (a learned probe) is one more attention.
    - one attention and one gelu per layer, plus one gelu in SigLIP's head MLP.

    Measured on the tiny models: exact on the dynamo export; the legacy export fuses one more
    SkipLayerNormalization (the counts are minimums), and leaves SigLIP's head attention unfused
    (docs/clip.md).
    """
    text_layers = config.text_config.num_hidden_layers
    vision_layers = config.vision_config.num_hidden_layers
    if family.model_type == "clip":
        return {
            "EmbedLayerNormalization": 1,
            "Attention": text_layers,  # the text tower's causal + padding mask: Attention
            "MultiHeadAttention": vision_layers,
            "SkipLayerNormalization": 2 * text_layers + 2 * vision_layers - 1,
            family.gelu: text_layers + vision_layers,
        }
    head = 1 if getattr(config.vision_config, "vision_use_head", True) else 0
    return {
        "EmbedLayerNormalization": 1,
        # no mask in either tower: MultiHeadAttention, or Attention where the exporter packs q/k/v
        # (the dynamo export's head, its query a constant probe)
        "Attention|MultiHeadAttention": text_layers + vision_layers + head,
        "SkipLayerNormalization": 2 * text_layers + 2 * vision_layers,
        family.gelu: text_layers + vision_layers + head,
    }


def model_info(config: PretrainedConfig, family: Family) -> ModelInfo:
    """Heads and width differ between the towers, so they are detected (0); layers: both towers'."""
    layers = config.text_config.num_hidden_layers + config.vision_config.num_hidden_layers
    return ModelInfo(model_type=family.model_type, num_layers=layers, expected=expected_counts_of(config, family))


def _kwargs(attn_implementation: str | None) -> dict:
    return {} if attn_implementation is None else {"attn_implementation": attn_implementation}


def _from_directory(path: Path, attn_implementation: str | None, *, name: str) -> SourceModel:
    config = read_local_config(path)
    family = family_of(config, path)  # before loading weights we would not use
    try:
        with no_progress_bar():
            model = getattr(transformers, family.model_class).from_pretrained(
                path, local_files_only=True, **_kwargs(attn_implementation)
            )
    except Exception as exc:  # missing or corrupt weights, an attention the class lacks
        raise TfoptError(f"{path}: cannot load the model ({first_line(exc)})") from None
    return describe(model, name)


def _from_hub(repo_id: str, attn_implementation: str | None) -> SourceModel:
    def load(cached_only: bool) -> PreTrainedModel:
        config = AutoConfig.from_pretrained(repo_id, local_files_only=cached_only)
        family = family_of(config, repo_id)
        with no_progress_bar():
            return getattr(transformers, family.model_class).from_pretrained(
                repo_id, local_files_only=cached_only, **_kwargs(attn_implementation)
            )

    return describe(load_from_hub(repo_id, TINY_CONFIGS, load), repo_id)
