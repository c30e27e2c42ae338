"""Where the vision model comes from: built-in tiny configs, a local directory, or a hub id.

Every source ends as a :class:`SourceModel`: the Hugging Face model in eval mode plus what the
other stages need (ModelInfo with tfopt's model type, the image size and channels). The model
class follows ``config.model_type``; a full CLIP or SigLIP checkpoint (both towers) loads its
vision tower.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from tfopt.errors import TfoptError, first_line
from tfopt.graph import encoder_counts
from tfopt.hub import load_from_hub, looks_like_hub_id, read_local_config
from tfopt.results import ModelInfo
from tfopt.torch_kit import no_progress_bar

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
DEFAULT_SOURCE = "tiny-vit"
TINY_SEED = 20261124
PERTURB_SCALE = 0.02


@dataclass(frozen=True)
class Family:
    """One supported architecture: its model class, tfopt's model type (the counts), what to leave out."""

    model_class: str
    model_type: str  # a name in tfopt.graph.MODEL_TYPES
    # No pooling head: only last_hidden_state is exported (and timed in torch), so none is built.
    init_kwargs: tuple[tuple[str, object], ...] = ()  # the model class's own arguments
    config_overrides: tuple[tuple[str, object], ...] = ()  # config attributes


_NO_POOLER = (("add_pooling_layer", False),)
_NO_HEAD = (("vision_use_head", False),)
# config.model_type -> family. "clip"/"siglip" are full two-tower checkpoints: their vision tower loads.
FAMILIES = {
    "vit": Family("ViTModel", "vit", _NO_POOLER),
    "deit": Family("DeiTModel", "deit", _NO_POOLER),
    "dinov2": Family("Dinov2Model", "dinov2"),
    "swin": Family("SwinModel", "swin", _NO_POOLER),
    "clip_vision_model": Family("CLIPVisionModel", "clip"),
    "clip": Family("CLIPVisionModel", "clip"),
    "siglip_vision_model": Family("SiglipVisionModel", "siglip", config_overrides=_NO_HEAD),
    "siglip": Family("SiglipVisionModel", "siglip", config_overrides=_NO_HEAD),
}

# Small enough to export in seconds (hidden 32-48, 2 layers or 2+2 Swin blocks, 32x32 images),
# with a shifted window in both Swin stages (16x16 and 8x8 tokens, window 4).
_IMAGE = dict(image_size=32, num_channels=3)
_LAYERS = dict(num_hidden_layers=2, num_attention_heads=4)
TINY_CONFIGS = {
    "tiny-vit": lambda: transformers.ViTConfig(**_IMAGE, **_LAYERS, patch_size=8, hidden_size=32, intermediate_size=64),
    "tiny-deit": lambda: transformers.DeiTConfig(**_IMAGE, **_LAYERS, patch_size=8, hidden_size=48, intermediate_size=96),
    "tiny-dinov2": lambda: transformers.Dinov2Config(**_IMAGE, **_LAYERS, patch_size=8, hidden_size=32, mlp_ratio=2),
    "tiny-swin": lambda: transformers.SwinConfig(
        **_IMAGE, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4, mlp_ratio=2.0
    ),
    "tiny-clip-vision": lambda: transformers.CLIPVisionConfig(
        **_IMAGE, **_LAYERS, patch_size=8, hidden_size=32, intermediate_size=64, projection_dim=32
    ),
    "tiny-siglip-vision": lambda: transformers.SiglipVisionConfig(
        **_IMAGE, **_LAYERS, patch_size=8, hidden_size=32, intermediate_size=64
    ),
}


@dataclass
class SourceModel:
    """The loaded PyTorch model and the facts about it the other stages need."""

    model: PreTrainedModel
    name: str  # what the user asked for: "tiny-vit", a directory, a hub id
    info: ModelInfo
    image_size: int
    num_channels: int

    @property
    def is_tiny(self) -> bool:
        return self.name in TINY_CONFIGS


def family_of(config: PretrainedConfig, name) -> Family:
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise TfoptError(
            f"{name}: model type {config.model_type!r} is not handled by vision (it handles {', '.join(FAMILIES)})"
        )
    return family


def random_model(config: PretrainedConfig, *, seed: int = TINY_SEED, attn_implementation: str | None = None) -> PreTrainedModel:
    """A random-weight model for ``config``, the same for the same seed (export and ``tfopt verify DIR`` rebuild it).

    Every parameter gets +0.02*randn: default inits leave biases, LayerNorms and Swin's relative
    position bias table constant, and a constant bias table folds away, hiding what a trained model has.
    """
    family = family_of(config, config.model_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for key, value in family.config_overrides:
            setattr(config, key, value)
        model = _model_class(family)._from_config(config, **_load_kwargs(family, attn_implementation, with_config=False))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * PERTURB_SCALE)
    return model.eval()


def load_source(source: str | None, *, attn_implementation: str | None = None) -> SourceModel:
    """Load what ``source`` names (None: tiny-vit); every failure is a one-line :class:`TfoptError`."""
    _check_attn(attn_implementation)
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
    """Wrap a model with the facts later stages need; the expected counts come from tfopt's table."""
    config = model.config
    family = family_of(config, name)
    return SourceModel(
        model=model.eval(),
        name=name,
        info=model_info(config, family),
        image_size=_size(config.image_size),
        num_channels=int(getattr(config, "num_channels", 3)),
    )


def model_info(config: PretrainedConfig, family: Family) -> ModelInfo:
    """ModelInfo(model_type, num_layers): the counts come from ``tfopt.graph.MODEL_TYPES``.

    Two types' table counts are a lower bound shared by layouts that differ (Swin's stages,
    CLIP's two towers), one SkipLayerNormalization per layer; this adapter knows the layout, so it
    states the exact count from the config (exact on the dynamo export; the legacy one can fuse
    one more, and expected counts are minimums: docs/vision.md):

    - Swin: its layers are its blocks, sum(depths), one attention and one gelu each; every block
      has 2 LayerNorms after a residual Add but the first block of each stage, whose first norm
      reads the patch embeddings or the patch merging; the final norm reads the last residual:
      2L - stages + 1. Heads and width change from stage to stage, so they are detected (0).
    - CLIP's vision tower: pre_layrnorm sits between the embeddings and layer 0, so layer 0's first
      norm reads no residual; the final norm (post_layernorm) is on the pooled output, not exported:
      2L - 1.
    """
    if family.model_type == "swin":
        layers, stages = int(sum(config.depths)), len(config.depths)
        expected = encoder_counts(layers, embed_layer_norm=False, extra_skip_layer_norms=1 - stages)
        return ModelInfo(model_type="swin", num_layers=layers, expected=expected)
    layers = config.num_hidden_layers
    expected = encoder_counts(layers, embed_layer_norm=False, extra_skip_layer_norms=-1) if family.model_type == "clip" else None
    return ModelInfo(
        model_type=family.model_type,
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        num_layers=layers,
        expected=expected,
    )


def _size(image_size) -> int:
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise TfoptError(f"non-square image size {tuple(image_size)} is not supported")
        return int(image_size[0])
    return int(image_size)


def _model_class(family: Family):
    return getattr(transformers, family.model_class)


def _load_kwargs(family: Family, attn_implementation: str | None, *, with_config: bool = True) -> dict:
    """from_pretrained's keyword arguments (the config overrides among them); from_config's without them."""
    kwargs = {**dict(family.init_kwargs), **(dict(family.config_overrides) if with_config else {})}
    if attn_implementation is not None:  # else transformers' default for the class (sdpa where it has one)
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


@contextlib.contextmanager
def _quiet_tower(config: PretrainedConfig):
    """A two-tower checkpoint (clip, siglip) loads only its vision tower: transformers' table of the
    text tower's unused weights is expected, not news."""
    if config.model_type not in ("clip", "siglip"):
        yield
        return
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)


def _check_attn(attn_implementation: str | None) -> None:
    if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise TfoptError(f"unknown attn_implementation {attn_implementation!r}; known: {', '.join(ATTN_IMPLEMENTATIONS)}")


def _from_directory(path: Path, attn_implementation: str | None, *, name: str) -> SourceModel:
    config = read_local_config(path)
    family = family_of(config, path)  # before loading weights we would not use
    try:
        with no_progress_bar(), _quiet_tower(config):
            model = _model_class(family).from_pretrained(
                path, local_files_only=True, **_load_kwargs(family, attn_implementation)
            )
    except Exception as exc:  # missing or corrupt weights, an attention the class lacks
        raise TfoptError(f"{path}: cannot load the model ({first_line(exc)})") from None
    return describe(model, name)


def _from_hub(repo_id: str, attn_implementation: str | None) -> SourceModel:
    def load(cached_only: bool) -> PreTrainedModel:
        config = AutoConfig.from_pretrained(repo_id, local_files_only=cached_only)
        family = family_of(config, repo_id)
        with no_progress_bar(), _quiet_tower(config):
            return _model_class(family).from_pretrained(
                repo_id, local_files_only=cached_only, **_load_kwargs(family, attn_implementation)
            )

    return describe(load_from_hub(repo_id, TINY_CONFIGS, load), repo_id)
