"""Where the Keras model comes from: built-in tiny models, a ``.keras``/``.h5`` file, a Hugging Face
TF directory, or an object built in code.

Two Keras worlds exist side by side: Keras 3 (``keras``; keras-hub's ``BertBackbone``,
the maintained Keras BERT) and tf_keras (Keras 2; Hugging Face's ``TFBertModel``). Both
end as a :class:`~tfopt_bert_tf.source.TfSource`, so the conversion, verification and
benchmark are the TF adapter's.
"""

from __future__ import annotations

import re
from pathlib import Path

from tfopt.errors import TfoptError, first_line
from tfopt.results import ModelInfo
from tfopt_bert_tf.models import TINY_CONFIG, hf_directory_source, hf_source, perturb_vectors, random_tf_bert, saved_model_dir
from tfopt_bert_tf.source import TfSource, input_roles, named_outputs

MODEL_TYPE = "bert_keras"
TINY_KERAS_HUB = "tiny-keras-hub-bert"
TINY_HF_KERAS = "tiny-hf-keras-bert"
BASE_KERAS_HUB = "random-keras-hub-bert-base"  # bert-base shape, random weights: for benchmarks
BUILT_IN = (TINY_KERAS_HUB, TINY_HF_KERAS, BASE_KERAS_HUB)
TINY_SEED = 20261123
TINY_BACKBONE = dict(vocabulary_size=128, num_layers=2, num_heads=4, hidden_dim=64, intermediate_dim=128, max_sequence_length=64)
BASE_BACKBONE = dict(vocabulary_size=30522, num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072, max_sequence_length=512)


def load_source(source: str | None) -> TfSource:
    """Load what ``source`` names; every failure is a one-line TfoptError."""
    if source is None or source == TINY_KERAS_HUB:
        return keras_source(random_backbone(**TINY_BACKBONE), TINY_KERAS_HUB)
    if source == BASE_KERAS_HUB:
        return keras_source(random_backbone(**BASE_BACKBONE), BASE_KERAS_HUB)
    if source == TINY_HF_KERAS:
        return keras_source(random_tf_bert(**TINY_CONFIG), TINY_HF_KERAS)
    path = Path(source).expanduser()
    if not path.exists():
        raise TfoptError(f"{source}: no such file or directory (expected a .keras/.h5 file, a Hugging Face TF model directory, or one of: {', '.join(BUILT_IN)})")
    if path.is_dir():
        if (path / "tf_model.h5").is_file():
            return hf_directory_source(path, model_type=MODEL_TYPE)
        if saved_model_dir(path) is not None:
            raise TfoptError(f"{source}: a SavedModel directory; convert it with the bert_tf adapter")
        raise TfoptError(f"{source}: directory is not a Hugging Face TF model (no tf_model.h5); bert_keras takes a .keras/.h5 file")
    if path.suffix not in (".keras", ".h5"):
        raise TfoptError(f"{source}: not a Keras model file (expected .keras or .h5)")
    return keras_source(load_keras_file(path), source)


def load_keras_file(path: Path):
    """Keras 3 first (keras-hub classes registered), then tf_keras for files Keras 2 wrote."""
    import keras
    import keras_hub  # noqa: F401 - registers BertBackbone & co. for deserialization

    try:
        return keras.saving.load_model(str(path))
    except Exception as keras3_error:
        try:
            import tf_keras

            return tf_keras.models.load_model(str(path))
        except Exception:
            raise TfoptError(f"{path}: cannot load the Keras model ({first_line(keras3_error)})") from None


def random_backbone(*, seed: int = TINY_SEED, **config):
    """A keras-hub ``BertBackbone`` with random weights and perturbed 1-D weights, the same for a seed."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(**config)
    perturb_vectors(backbone.weights, seed=seed)
    return backbone


def is_tf_keras_model(model) -> bool:
    """Hugging Face TF models (and anything else) built on tf_keras, Keras 2."""
    try:
        import tf_keras
    except ImportError:
        return False
    return isinstance(model, tf_keras.Model)


def keras_source(model, name: str) -> TfSource:
    """Wrap a Keras 3 or tf_keras BERT as a TfSource (a tf.function over ``model(..., training=False)``)."""
    if getattr(getattr(model, "config", None), "model_type", None) is not None:  # Hugging Face TF model
        return hf_source(model, name, model_type=MODEL_TYPE, reference="keras")
    import keras

    if not isinstance(model, keras.Model) and not is_tf_keras_model(model):
        raise TfoptError(f"{name}: not a Keras model ({type(model).__name__})")
    return _functional_source(model, name)


def _functional_source(model, name: str) -> TfSource:
    import tensorflow as tf

    try:
        structure = model.input
    except (AttributeError, ValueError):
        raise TfoptError(f"{name}: the Keras model has no defined inputs; build it with keras.Input (a functional model)") from None
    as_dict = isinstance(structure, dict)
    tensors = structure if as_dict else {t.name: t for t in (structure if isinstance(structure, (list, tuple)) else [structure])}
    roles = input_roles(list(tensors), name)
    names = [roles[role] for role in ("ids", "mask", "segments") if role in roles]
    signature = [tf.TensorSpec([None, None], tf.as_dtype(_dtype(tensors[n])), name=n) for n in names]
    positional = list(tensors)

    def call(*inputs):
        feeds = dict(zip(names, inputs))
        return named_outputs(model(feeds if as_dict else [feeds[n] for n in positional], training=False))

    vocab_size = getattr(model, "vocabulary_size", 0) or _embedding_rows(model)
    if not vocab_size:
        raise TfoptError(f"{name}: cannot tell the vocabulary size (no vocabulary_size attribute, no token Embedding layer)")
    return TfSource(
        name=name,
        function=tf.function(call, input_signature=signature),
        input_signature=signature,
        info=ModelInfo(MODEL_TYPE, getattr(model, "num_heads", 0), getattr(model, "hidden_dim", 0), getattr(model, "num_layers", 0)),
        vocab_size=int(vocab_size),
        pad_token_id=0,
        max_sequence_length=getattr(model, "max_sequence_length", None) or 512,
        eager=call,
        reference="keras",
        model=model,
    )


def _dtype(tensor) -> str:
    dtype = tensor.dtype
    return dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))


def _embedding_rows(model) -> int:
    """Rows of the first Embedding layer (token embeddings come first in every BERT)."""
    for layer in layer_tree(model):
        if type(layer).__name__ in ("Embedding", "ReversibleEmbedding", "TokenAndPositionEmbedding") and hasattr(layer, "input_dim"):
            return int(layer.input_dim)
    return 0


def layer_tree(model) -> list:
    """Every layer inside ``model``, depth first (Keras 3 and tf_keras both track them in ``_flatten_layers``)."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return [layer for layer in flatten(include_self=False)]
    return list(getattr(model, "layers", []))


_SCOPE_SUFFIX = re.compile(r"_\d+$")


def layer_of_node(model, node_name: str) -> str | None:
    """The innermost layer whose name scope holds ``node_name`` (Keras 3 suffixes scopes with ``_<n>``)."""
    names = {layer.name for layer in layer_tree(model)}
    for part in reversed(node_name.split("/")[:-1]):
        for candidate in (part, _SCOPE_SUFFIX.sub("", part)):
            if candidate in names:
                return candidate
    return None
