"""The encoder-decoder models the seq2seq adapter takes: tiny built-in configs, trained ones, a local directory, a hub id.

A family is data here: its transformers class, tfopt's model type (the shared rules and the
lower-bound counts of :mod:`tfopt.graph.model_types`), whether its encoder reads tokens or audio
features, and the exact fused-op counts of its two graphs for the config's layer counts
(:func:`expected_counts`, measured on both exporters). Tiny models get every parameter nudged
(+0.02·randn): transformers starts norms and biases at 1 and 0, which an exporter can fold
and a fusion that drops them would hide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tfopt.errors import TfoptError, first_line
from tfopt.graph.model_types import ATTENTION_KEY, GELU_KEY
from tfopt.hub import load_from_hub, looks_like_hub_id, read_local_config
from tfopt.results import ModelInfo

DEFAULT_SOURCE = "tiny-t5"
TINY_SEED = 20261206
PERTURB_SCALE = 0.02
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass(frozen=True)
class Family:
    model_class: str  # transformers class
    model_type: str  # tfopt.graph.model_types name: the shared rules' counts table
    audio: bool = False  # the encoder reads log-mel features (Whisper), not token ids
    encoder_mask: bool = True  # the decoder's cross-attention takes the encoder's padding mask
    # torch 2.13's dynamo exporter cannot trace the family's sdpa attention: export it eagerly
    eager_for_dynamo: bool = False


FAMILIES = {
    "t5": Family("T5ForConditionalGeneration", "t5", eager_for_dynamo=True),
    "mt5": Family("MT5ForConditionalGeneration", "mt5", eager_for_dynamo=True),
    "bart": Family("BartForConditionalGeneration", "bart"),
    "marian": Family("MarianMTModel", "marian"),
    "whisper": Family("WhisperForConditionalGeneration", "whisper", audio=True, encoder_mask=False),
}

_SHAPE = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
              encoder_ffn_dim=128, decoder_ffn_dim=128)


def _tiny(name: str):
    import transformers

    ids = dict(vocab_size=100, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    if name in ("tiny-t5", "tiny-flan-t5"):
        gated = {"feed_forward_proj": "gated-gelu"} if name == "tiny-flan-t5" else {}
        return transformers.T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                     relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                     decoder_start_token_id=0, **gated)
    if name == "tiny-bart":
        return transformers.BartConfig(**_SHAPE, **ids, max_position_embeddings=64, forced_eos_token_id=None)
    if name == "tiny-marian":
        return transformers.MarianConfig(**_SHAPE, **{**ids, "decoder_start_token_id": 1}, decoder_vocab_size=100,
                                         max_position_embeddings=64, forced_eos_token_id=None)
    return transformers.WhisperConfig(**_SHAPE, **{**ids, "pad_token_id": 0, "bos_token_id": 1, "decoder_start_token_id": 1},
                                      num_mel_bins=16, max_source_positions=50, max_target_positions=64)  # 1 s of audio


TINY_NAMES = ("tiny-t5", "tiny-flan-t5", "tiny-bart", "tiny-marian", "tiny-whisper")


@dataclass
class SourceModel:
    """The PyTorch model and the facts the stages need about its two graphs."""

    model: object  # transformers PreTrainedModel, eval mode
    name: str
    family: str
    decoder_layers: int
    encoder_layers: int
    heads: int  # decoder attention heads
    head_size: int
    width: int  # d_model
    vocab_size: int
    decoder_start_token_id: int
    eos_token_id: int | None
    pad_token_id: int
    num_mel_bins: int = 0  # audio encoders only
    max_source_positions: int = 0  # Whisper: audio frames after the conv front end (fixed by its position table)

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def encoder_info(self) -> ModelInfo:
        return ModelInfo(model_type=self.spec.model_type, num_layers=self.encoder_layers,
                         expected=expected_counts(self, "encoder"))

    @property
    def decoder_info(self) -> ModelInfo:
        return ModelInfo(model_type=self.spec.model_type, num_layers=2 * self.decoder_layers,
                         expected=expected_counts(self, "decoder"))


def expected_counts(source: SourceModel, graph: str) -> dict[str, int]:
    """The fused-op counts of a fully fused encoder or decoder graph (decoder: with past).

    Per layer, an encoder has one attention and two norms after a residual, a decoder two
    attentions (self over the cache, cross over the encoder's keys/values) and three norms.
    T5 (RMSNorm): the first norm reads the embeddings (SimplifiedLayerNormalization), every
    other one a residual, the final norm included. BART (post-LN): the embeddings' LayerNorm
    becomes EmbedLayerNormalization. Marian: no embedding norm. Whisper (pre-LN): the decoder's
    final norm reads the last residual too (+1), and its first norm reads the token + position
    sum (EmbedLayerNormalization from the legacy exporter, SkipLayerNormalization from dynamo's
    GatherND lookup); the encoder's first norm reads the conv front end (a LayerNormalization
    stays), its final norm the last residual: 2L. A gelu per feed-forward where the family's
    activation is gelu (Flan-T5's gated-gelu too); Whisper's conv front end adds two.
    """
    config = source.model.config
    layers = source.encoder_layers if graph == "encoder" else source.decoder_layers
    attentions = layers * (1 if graph == "encoder" else 2)
    norms = layers * (2 if graph == "encoder" else 3)
    family = source.spec.model_type
    activation = getattr(config, "dense_act_fn", None) or getattr(config, "activation_function", "")
    gelus = {GELU_KEY: layers} if "gelu" in str(activation) else {}
    if family in ("t5", "mt5"):
        return {ATTENTION_KEY: attentions, "SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": norms, **gelus}
    if family == "bart":
        return {"EmbedLayerNormalization": 1, ATTENTION_KEY: attentions, "SkipLayerNormalization": norms, **gelus}
    if family == "whisper":  # one key for both graphs, so the run's summed table reads right
        front_end = {GELU_KEY: layers + 2} if graph == "encoder" else gelus
        return {ATTENTION_KEY: attentions, "EmbedLayerNormalization|SkipLayerNormalization": norms + (graph == "decoder"), **front_end}
    return {ATTENTION_KEY: attentions, "SkipLayerNormalization": norms, **gelus}


def family_of(config, name) -> str:
    family = config.model_type if config.model_type in FAMILIES else None
    if family is None:
        raise TfoptError(f"{name}: model type {config.model_type!r} is not handled by seq2seq (it handles {', '.join(FAMILIES)})")
    return family


def _check_attn(attn_implementation: str | None) -> None:
    if attn_implementation is not None and attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise TfoptError(f"unknown attn_implementation {attn_implementation!r}; known: {', '.join(ATTN_IMPLEMENTATIONS)}")


def random_model(config, *, seed: int = TINY_SEED, attn_implementation: str | None = None):
    """A random-weight model for ``config``, the same for the same seed; every parameter nudged off its init."""
    import torch
    import transformers

    family = family_of(config, config.model_type)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, FAMILIES[family].model_class)._from_config(config, **kwargs)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * PERTURB_SCALE)
    return model.eval()


def describe(model, name: str) -> SourceModel:
    config = model.config
    family = family_of(config, name)
    if family in ("t5", "mt5"):
        decoder_layers = config.num_decoder_layers or config.num_layers
        encoder_layers, heads, head_size = config.num_layers, config.num_heads, config.d_kv
    else:
        decoder_layers, encoder_layers = config.decoder_layers, config.encoder_layers
        heads = config.decoder_attention_heads
        head_size = config.d_model // heads
    start, eos = config.decoder_start_token_id, config.eos_token_id
    if isinstance(eos, (list, tuple)):  # several end tokens: the search here stops on one, the first
        eos = eos[0] if eos else None
    if start is None:
        raise TfoptError(f"{name}: the config names no decoder_start_token_id; generation cannot start")
    return SourceModel(
        model=model.eval(), name=name, family=family, decoder_layers=decoder_layers, encoder_layers=encoder_layers,
        heads=heads, head_size=head_size, width=config.d_model, vocab_size=model.get_output_embeddings().out_features,
        decoder_start_token_id=int(start), eos_token_id=None if eos is None else int(eos),
        pad_token_id=int(config.pad_token_id if config.pad_token_id is not None else 0),
        num_mel_bins=int(getattr(config, "num_mel_bins", 0) or 0),
        max_source_positions=int(getattr(config, "max_source_positions", 0) or 0),
    )


def load_source(source: str | None, *, attn_implementation: str | None = None, progress=None) -> SourceModel:
    """``tiny-<family>``, ``stdlib-t5[-tiny]`` (trained here), a local directory or a hub id; failures in one line."""
    from .textmodel import TEXT_MODELS, trained_model

    _check_attn(attn_implementation)
    source = source or DEFAULT_SOURCE
    if source in TEXT_MODELS:
        return describe(trained_model(source, progress=progress, attn_implementation=attn_implementation), source)
    if source in TINY_NAMES:
        return describe(random_model(_tiny(source), attn_implementation=attn_implementation), source)
    path = Path(source).expanduser()
    if path.exists():
        return _from_directory(path, attn_implementation, name=source)
    if looks_like_hub_id(source):
        return _from_hub(source, attn_implementation)
    raise TfoptError(f"{source}: no such model directory (or use a hub id, or one of: {', '.join([*TINY_NAMES, *TEXT_MODELS])})")


def _model_class(config, name):
    import transformers

    return getattr(transformers, FAMILIES[family_of(config, name)].model_class)


def _from_directory(path: Path, attn_implementation: str | None, *, name: str) -> SourceModel:
    from tfopt.torch_kit import no_progress_bar

    config = read_local_config(path)
    model_class = _model_class(config, path)  # refuse an unhandled type before loading weights
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        with no_progress_bar():
            model = model_class.from_pretrained(path, local_files_only=True, **kwargs)
    except Exception as exc:
        raise TfoptError(f"{path}: cannot load the model ({first_line(exc)})") from None
    return describe(model, name)


def _from_hub(repo_id: str, attn_implementation: str | None) -> SourceModel:
    from transformers import AutoConfig

    from tfopt.torch_kit import no_progress_bar

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}

    def load(cached_only: bool):
        config = AutoConfig.from_pretrained(repo_id, local_files_only=cached_only)
        model_class = _model_class(config, repo_id)
        with no_progress_bar():
            return model_class.from_pretrained(repo_id, local_files_only=cached_only, **kwargs)

    from .textmodel import TEXT_MODELS

    return describe(load_from_hub(repo_id, [*TINY_NAMES, *TEXT_MODELS], load), repo_id)
