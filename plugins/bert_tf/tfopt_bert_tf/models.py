"""Where the TF model comes from: the built-in tiny BERT, a Hugging Face TFBertModel, a SavedModel.

Every source ends as a :class:`~tfopt_bert_tf.source.TfSource`. Loading never touches a
model hub: directories are read with ``local_files_only``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfopt.errors import TfoptError, first_line
from tfopt.results import ModelInfo

from .source import TfSource, input_roles, named_outputs

MODEL_TYPE = "bert_tf"
TINY_NAME = "tiny-bert-tf"
BASE_NAME = "random-bert-base-tf"  # bert-base shape, random weights: for benchmarks
TINY_SEED = 20261123
TINY_CONFIG = dict(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    type_vocab_size=2,
    pad_token_id=0,
)
BUILT_IN = (TINY_NAME, BASE_NAME)
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
HF_WEIGHTS = "tf_model.h5"


def load_source(source: str | None, *, signature: str = "serving_default", model_type: str = MODEL_TYPE) -> TfSource:
    """Load what ``source`` names; every failure is a one-line TfoptError."""
    if source is None or source == TINY_NAME:
        return hf_source(random_tf_bert(**TINY_CONFIG), TINY_NAME, model_type=model_type)
    if source == BASE_NAME:
        return hf_source(random_tf_bert(), BASE_NAME, model_type=model_type)
    path = Path(source).expanduser()
    if not path.exists():
        raise TfoptError(f"{source}: no such directory (expected a SavedModel or a Hugging Face TF model directory, or one of: {', '.join(BUILT_IN)})")
    if not path.is_dir():
        raise TfoptError(f"{source}: not a directory (expected a SavedModel or a Hugging Face TF model directory)")
    if (path / HF_WEIGHTS).is_file():
        return hf_directory_source(path, model_type=model_type)
    saved_model = saved_model_dir(path)
    if saved_model is not None:
        return saved_model_source(saved_model, name=source, signature=signature, model_type=model_type)
    if (path / "config.json").is_file():
        raise TfoptError(f"{source}: Hugging Face directory without {HF_WEIGHTS} (TF weights); convert the PyTorch weights with TFBertModel.from_pretrained(..., from_pt=True).save_pretrained(...) first")
    raise TfoptError(f"{source}: not a SavedModel (no saved_model.pb) and not a Hugging Face TF model directory (no {HF_WEIGHTS})")


def saved_model_dir(path: Path) -> Path | None:
    """``path`` itself if it holds saved_model.pb, else the newest ``saved_model/<version>`` below it (HF's layout)."""
    if any((path / name).is_file() for name in SAVED_MODEL_FILES):
        return path
    versions = sorted(
        (p for p in (path / "saved_model").glob("*") if p.is_dir() and any((p / n).is_file() for n in SAVED_MODEL_FILES)),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    return versions[-1] if versions else None


# ---------------------------------------------------------------- Hugging Face TFBertModel


def random_tf_bert(
    *,
    vocab_size: int = 30522,
    hidden_size: int = 768,
    num_hidden_layers: int = 12,
    num_attention_heads: int = 12,
    intermediate_size: int = 3072,
    max_position_embeddings: int = 512,
    type_vocab_size: int = 2,
    pad_token_id: int = 0,
    seed: int = TINY_SEED,
):
    """A built HF ``TFBertModel`` with random weights (bert-base shape by default), the same for a seed."""
    import tensorflow as tf
    from transformers import BertConfig, TFBertModel

    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size, pad_token_id=pad_token_id,
    )
    tf.random.set_seed(seed)
    model = TFBertModel(config)
    ids = tf.constant([[1, 2, 3, pad_token_id]], dtype=tf.int32)
    model(input_ids=ids, attention_mask=tf.ones_like(ids), token_type_ids=tf.zeros_like(ids), training=False)
    perturb_vectors(model.weights, seed=seed)
    return model


def perturb_vectors(weights, *, seed: int = 0, scale: float = 0.05) -> None:
    """Add small noise to every 1-D weight (biases, LayerNorm gamma/beta).

    Random init leaves them all zeros or ones; converters may de-duplicate identical
    tensors, which no real checkpoint has and which hides fusions that pick the wrong bias.
    """
    rng = np.random.default_rng(seed)
    for weight in weights:
        if len(weight.shape) == 1:
            value = np.asarray(weight.numpy())
            weight.assign(value + rng.normal(0.0, scale, size=value.shape).astype(value.dtype))


def hf_directory_source(path: Path, *, model_type: str = MODEL_TYPE) -> TfSource:
    """``TFBertModel.from_pretrained`` on a local directory (config.json + tf_model.h5)."""
    config = _read_config(path / "config.json")
    if config.get("model_type") != "bert":
        raise TfoptError(f"{path}: model type {config.get('model_type')!r} is not BERT (this adapter handles bert)")
    try:
        from transformers import TFBertModel
    except ImportError as exc:
        raise TfoptError(f"{path}: TFBertModel is not available ({first_line(exc)}); it needs transformers<5 and tf-keras") from None
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "All model checkpoint layers were used ..." is not news
    try:
        model = TFBertModel.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # corrupt h5, shape mismatch
        raise TfoptError(f"{path}: cannot load the TF weights ({first_line(exc)})") from None
    return hf_source(model, str(path), model_type=model_type)


def hf_source(model, name: str, *, model_type: str = MODEL_TYPE, reference: str = "tensorflow") -> TfSource:
    """Wrap a Hugging Face TF BERT (a tf_keras model) as a TfSource."""
    import tensorflow as tf

    config = model.config
    if config.model_type != "bert":
        raise TfoptError(f"{name}: model type {config.model_type!r} is not BERT (this adapter handles bert)")
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if config.type_vocab_size > 1 else [])
    signature = [tf.TensorSpec([None, None], tf.int32, name=n) for n in names]

    def call(*inputs):
        return named_outputs(model(**dict(zip(names, inputs)), training=False))

    return TfSource(
        name=name,
        function=tf.function(call, input_signature=signature),
        input_signature=signature,
        info=ModelInfo(model_type, config.num_attention_heads, config.hidden_size, config.num_hidden_layers),
        vocab_size=config.vocab_size,
        pad_token_id=config.pad_token_id or 0,
        max_sequence_length=config.max_position_embeddings,
        eager=call,
        reference=reference,
        model=model,
    )


# ---------------------------------------------------------------- SavedModel


def saved_model_source(path: Path, *, name: str, signature: str = "serving_default", model_type: str = MODEL_TYPE) -> TfSource:
    """A SavedModel's signature, called through a tf.function with the signature's own input names."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise TfoptError(f"{path}: cannot load the SavedModel ({first_line(exc)})") from None
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if signature not in signatures:
        have = ", ".join(signatures) or "none"
        raise TfoptError(f"{path}: no signature {signature!r} in the SavedModel (signatures: {have})")
    concrete = signatures[signature]
    specs = concrete.structured_input_signature[1]
    roles = input_roles(list(specs), str(path))
    names = [roles[role] for role in ("ids", "mask", "segments") if role in roles]  # HF's order, not alphabetical
    input_signature = [tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names]

    def call(*inputs):
        return named_outputs(concrete(**dict(zip(names, inputs))))

    facts = _saved_model_facts(path, loaded)
    return TfSource(
        name=name,
        function=tf.function(call, input_signature=input_signature),
        input_signature=input_signature,
        info=ModelInfo(model_type, facts.get("num_attention_heads", 0), facts.get("hidden_size", 0), facts.get("num_hidden_layers", 0)),
        vocab_size=facts["vocab_size"],
        pad_token_id=facts.get("pad_token_id") or 0,
        max_sequence_length=facts.get("max_position_embeddings", 512),
        eager=None,
        model=loaded,
    )


def _saved_model_facts(path: Path, loaded) -> dict:
    """Model facts from a config.json beside the SavedModel (HF's layout), else from its variables."""
    for directory in (path, path.parent, path.parent.parent):
        config_file = directory / "config.json"
        if config_file.is_file():
            config = _read_config(config_file)
            if "vocab_size" in config:
                return config
    import tensorflow as tf

    try:
        variables = tf.train.list_variables(str(path / "variables" / "variables"))
    except Exception:  # a SavedModel without variables
        variables = []
    embeddings = [shape for name, shape in variables if len(shape) == 2 and any(key in name for key in _EMBEDDING_NAMES)]
    if not embeddings:
        raise TfoptError(f"{path}: cannot tell the vocabulary size (no config.json beside it, no word-embedding variable)")
    vocab_size, hidden_size = (int(d) for d in embeddings[0])
    return {"vocab_size": vocab_size, "hidden_size": hidden_size}


# Checkpoint keys of the token-embedding table: HF/Google BERT, keras-hub, Model Garden.
_EMBEDDING_NAMES = ("word_embeddings", "token_embedding", "word_embedding")


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TfoptError(f"{path}: cannot read config.json ({first_line(exc)})") from None
