"""Where the Longformer comes from: a built-in random-weight config, a local directory, or a hub id.

Every source ends as a :class:`SourceModel`: HF's ``LongformerModel`` in eval mode (the
reference) plus what the other stages need (ModelInfo with the expected fused-op counts,
vocabulary, padding id, longest sequence, one-sided window).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, LongformerConfig, LongformerModel

from tfopt.errors import TfoptError, first_line
from tfopt.hub import load_from_hub, looks_like_hub_id
from tfopt.results import ModelInfo
from tfopt.torch_kit import no_progress_bar, perturb_vector_params

MODEL_TYPE = "longformer"
GELU_OPS = "BiasGelu|FastGelu|Gelu|BiasFastGelu"
# tiny-longformer: hidden 32, 2 layers, window 8 (w = 4); positions for sequences up to 4096.
# longformer-base-random: longformer-base-4096's shape (12 layers, hidden 768, window 512), random weights.
TINY_CONFIGS = {
    "tiny-longformer": lambda: LongformerConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        attention_window=8, max_position_embeddings=4098, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        type_vocab_size=1,
    ),
    "longformer-base-random": lambda: LongformerConfig(
        vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        attention_window=512, max_position_embeddings=4098, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        type_vocab_size=1,
    ),
}
DEFAULT_SOURCE = "tiny-longformer"
SEED = 20261205


@dataclass
class SourceModel:
    model: LongformerModel
    name: str
    info: ModelInfo
    vocab_size: int
    pad_token_id: int
    max_sequence_length: int
    window: int  # one-sided (the config's attention_window // 2), the largest of the layers

    @property
    def is_tiny(self) -> bool:
        return self.name == "tiny-longformer"


def expected_counts(num_layers: int) -> dict[str, int]:
    """A fully fused export: EmbedLayerNormalization, then one attention node, two SkipLayerNorms and one Gelu per layer.

    The same for both targets (the attention is ``LongformerAttention`` in either domain).
    """
    return {
        "EmbedLayerNormalization": 1,
        "LongformerAttention": num_layers,
        "SkipLayerNormalization": 2 * num_layers,
        GELU_OPS: num_layers,
    }


def random_model(config: LongformerConfig, *, seed: int = SEED) -> LongformerModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LongformerModel(config, add_pooling_layer=False)
    perturb_vector_params(model, seed=seed)
    return model.eval()


def describe(model: LongformerModel, name: str) -> SourceModel:
    config = model.config
    if config.model_type != MODEL_TYPE:
        raise TfoptError(f"{name}: model type {config.model_type!r} is not handled by longformer (it handles longformer)")
    windows = config.attention_window if isinstance(config.attention_window, (list, tuple)) else [config.attention_window]
    return SourceModel(
        model=model.eval(),
        name=name,
        info=ModelInfo(
            model_type=MODEL_TYPE,
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            expected=expected_counts(config.num_hidden_layers),
        ),
        vocab_size=config.vocab_size,
        pad_token_id=config.pad_token_id if config.pad_token_id is not None else 1,
        max_sequence_length=config.max_position_embeddings - (config.pad_token_id or 0) - 1,
        window=max(windows) // 2,
    )


def load_source(source: str | None) -> SourceModel:
    """Load what ``source`` names (None = tiny-longformer); every failure is one :class:`TfoptError` line."""
    source = source or DEFAULT_SOURCE
    if source in TINY_CONFIGS:
        return describe(random_model(TINY_CONFIGS[source]()), source)
    path = Path(source).expanduser()
    if path.exists():
        return _from_directory(path, source)
    if looks_like_hub_id(source):
        return _from_hub(source)
    raise TfoptError(f"{source}: no such model directory (or use a hub id, or one of: {', '.join(TINY_CONFIGS)})")


def _from_directory(path: Path, name: str) -> SourceModel:
    if not path.is_dir():
        raise TfoptError(f"{path}: not a directory (expected a Hugging Face model directory)")
    if not os.access(path, os.R_OK | os.X_OK) or not (path / "config.json").is_file():
        raise TfoptError(f"{path}: no readable config.json, not a Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise TfoptError(f"{path}: cannot read config.json ({first_line(exc)})") from None
    if config.model_type != MODEL_TYPE:
        raise TfoptError(f"{path}: model type {config.model_type!r} is not handled by longformer (it handles longformer)")
    try:
        with no_progress_bar():
            model = LongformerModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    except Exception as exc:
        raise TfoptError(f"{path}: cannot load the model weights ({first_line(exc)})") from None
    return describe(model, name)


def _from_hub(repo_id: str) -> SourceModel:
    def load(cached_only: bool) -> LongformerModel:
        with no_progress_bar():
            return LongformerModel.from_pretrained(repo_id, local_files_only=cached_only, add_pooling_layer=False)

    model = load_from_hub(repo_id, TINY_CONFIGS, load)
    return describe(model, repo_id)
