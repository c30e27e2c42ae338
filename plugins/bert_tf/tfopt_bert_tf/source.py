"""What both TF adapters convert, verify and benchmark: one callable TF model plus the facts about it.

A :class:`TfSource` wraps any BERT-like TF model (a SavedModel signature, a Hugging Face
``TFBertModel``, a Keras 3 model) as a ``tf.function`` whose positional inputs follow a
named ``TensorSpec`` signature and which returns a dict of named outputs. The converter,
the verifier and the benchmark only ever see that function, so every kind of source goes
through the same code, and the ONNX graph's input/output names are the source's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from tfopt.errors import TfoptError
from tfopt.results import ModelInfo

# The input names BERT-like TF models use, by role. HF: input_ids/attention_mask/token_type_ids;
# keras-hub: token_ids/padding_mask/segment_ids; TF Hub / Model Garden: input_word_ids/input_mask/input_type_ids.
INPUT_ROLES = {
    "ids": ("input_ids", "token_ids", "input_word_ids"),
    "mask": ("attention_mask", "padding_mask", "input_mask"),
    "segments": ("token_type_ids", "segment_ids", "input_type_ids"),
}


@dataclass
class TfSource:
    """A TF model ready to convert: ``function(*inputs in signature order) -> {output name: tensor}``.

    ``eager`` does the same without ``tf.function`` (None where the source has no eager
    form: a loaded SavedModel signature is always a graph).
    """

    name: str  # what the user asked for: a path or a built-in name
    function: Any  # tf.function with input_signature
    input_signature: list  # one named tf.TensorSpec per input, in graph order
    info: ModelInfo
    vocab_size: int
    pad_token_id: int = 0
    max_sequence_length: int = 512
    eager: Callable[..., Mapping[str, Any]] | None = None
    reference: str = "tensorflow"  # the framework verify compares against
    model: Any = None  # the framework object behind the function (keeps it alive, lets routes use it)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.input_signature)

    def roles(self) -> dict[str, str]:
        """Role ("ids", "mask", "segments") -> this model's input name."""
        return input_roles(self.input_names, self.name)

    def run(self, feeds: Mapping[str, np.ndarray], *, eager: bool = False) -> dict[str, np.ndarray]:
        """Outputs as numpy for numpy feeds (cast to the signature's dtypes)."""
        fn = self.eager if eager else self.function
        if fn is None:
            raise TfoptError(f"{self.name}: no eager form (a SavedModel signature runs as a graph only)")
        outputs = fn(*self.tensors(feeds))
        return {name: np.asarray(value) for name, value in outputs.items()}

    def tensors(self, feeds: Mapping[str, np.ndarray]) -> list:
        import tensorflow as tf

        return [tf.constant(np.asarray(feeds[spec.name]), dtype=spec.dtype) for spec in self.input_signature]


def input_roles(names: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    """Map input names to BERT roles; an input with no known role is an error (no dummy inputs for it)."""
    roles: dict[str, str] = {}
    for name in names:
        role = next((role for role, known in INPUT_ROLES.items() if name in known), None)
        if role is None:
            known = ", ".join(n for group in INPUT_ROLES.values() for n in group)
            raise TfoptError(f"{what}: input {name!r} is not a BERT input this adapter knows ({known})")
        roles[role] = name
    if "ids" not in roles:
        raise TfoptError(f"{what}: no token-id input among {', '.join(names) or 'its inputs'}")
    return roles


def named_outputs(outputs: Any) -> dict[str, Any]:
    """A model's outputs as {name: tensor}: dicts and HF ModelOutputs keep their keys, others get output_<i>."""
    if isinstance(outputs, Mapping) or hasattr(outputs, "keys"):
        return {key: outputs[key] for key in outputs.keys() if outputs[key] is not None}
    if isinstance(outputs, (list, tuple)):
        return {f"output_{i}": value for i, value in enumerate(outputs)}
    return {"output_0": outputs}
