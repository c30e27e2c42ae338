"""tf2onnx conversion shared by the TF and Keras adapters.

What it adds to ``tf2onnx.convert.from_function``: the Erfc handler TF 2.16+ needs, opset
17, readable dynamic dims (``batch``, ``sequence``), an atomic write, and failures as one
line naming the op (and the TF node, whose path holds the layer) that could not be
converted. tf2onnx does not raise on an unsupported op: it logs it, leaves the TF op in
the graph and returns a model ONNX Runtime cannot load. Both the log and the graph are
checked here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import onnx

from tfopt.errors import TfoptError, first_line

from .erfc import register_erfc_handler

DEFAULT_OPSET = 17  # first opset with LayerNormalization; what the fusion rules are written for
DYNAMIC_DIM_NAMES = ("batch", "sequence")
ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")

# tf2onnx 1.17: logger.error("Tensorflow op [%s: %s] is not supported", node_name, op_type)
_UNSUPPORTED = re.compile(r"Tensorflow op \[([^\]]+?): ([^\]:]+)\] is not supported")


@dataclass(frozen=True)
class Unconvertible:
    """One TF op tf2onnx could not convert, and the node (its name scope holds the layer) it sits in."""

    op_type: str
    node: str

    def describe(self) -> str:
        return f"{self.op_type} (node {self.node})" if self.node and self.node != self.op_type else self.op_type


def convert_function(function, input_signature: Sequence, output_path: str | os.PathLike, *, what: str, opset: int = DEFAULT_OPSET, explain=None) -> onnx.ModelProto:
    """Convert a ``tf.function`` to ONNX, write it atomically to ``output_path``, return it.

    ``what`` names the source in error messages; ``explain(Unconvertible) -> str`` may add
    context (the Keras adapter names the layer).
    """
    import tf2onnx

    register_erfc_handler()
    log = io.StringIO()
    try:
        with captured_tf2onnx_log(log):
            model, _ = tf2onnx.convert.from_function(function, input_signature=list(input_signature), opset=opset)
    except Exception as exc:  # tf2onnx raises bare Exception, ValueError, KeyError ...
        failed = unsupported_ops(str(exc) + "\n" + log.getvalue())
        if failed:
            raise TfoptError(f"{what}: tf2onnx cannot convert {_describe(failed, explain)}") from None
        raise TfoptError(f"{what}: tf2onnx failed ({first_line(exc)})") from None
    failed = unsupported_ops(log.getvalue()) or leftover_ops(model)
    if failed:
        raise TfoptError(f"{what}: tf2onnx cannot convert {_describe(failed, explain)}")
    name_dynamic_dims(model)
    write_atomically(model, output_path)
    return model


def unsupported_ops(log_text: str) -> list[Unconvertible]:
    """The ops tf2onnx logged as unsupported, first seen first, one per op type."""
    found: dict[str, Unconvertible] = {}
    for node, op_type in _UNSUPPORTED.findall(log_text):
        found.setdefault(op_type.strip(), Unconvertible(op_type.strip(), node.strip()))
    return list(found.values())


def leftover_ops(model: onnx.ModelProto) -> list[Unconvertible]:
    """Nodes that are not ONNX ops (TF ops tf2onnx passed through): ORT would refuse the model."""
    found: dict[str, Unconvertible] = {}
    for node in model.graph.node:
        foreign = node.domain not in ONNX_DOMAINS
        unknown = node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)
        if foreign or unknown:
            found.setdefault(node.op_type, Unconvertible(node.op_type, node.name))
    return list(found.values())


def name_dynamic_dims(model: onnx.ModelProto) -> None:
    """tf2onnx calls unknown dims ``unk__123``; name them ``batch`` and ``sequence`` as the other exporters do.

    BERT's inputs are (batch, sequence); its outputs (batch, sequence, hidden) or
    (batch, hidden). Shared names tell shape inference (and the fusion rules) that the
    output dims are the input dims.
    """
    inputs = [(value, DYNAMIC_DIM_NAMES) for value in model.graph.input]
    outputs = [(value, DYNAMIC_DIM_NAMES if len(value.type.tensor_type.shape.dim) >= 3 else DYNAMIC_DIM_NAMES[:1])
               for value in model.graph.output]
    for value, names in inputs + outputs:
        for dim, name in zip(value.type.tensor_type.shape.dim, names):
            if not dim.HasField("dim_value"):
                dim.dim_param = name


def write_atomically(model: onnx.ModelProto, output_path: str | os.PathLike) -> Path:
    """Temp file beside the target, then rename: a failed write leaves no half-written model."""
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output_path.name}.", suffix=".tmp", dir=output_path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output_path


def _describe(failed: list[Unconvertible], explain) -> str:
    parts = [explain(item) if explain else item.describe() for item in failed]
    return ("op " if len(parts) == 1 else "ops ") + ", ".join(parts)


@contextlib.contextmanager
def captured_tf2onnx_log(sink: io.StringIO):
    """Route tf2onnx's log records into ``sink`` (and off the console) for the duration."""
    logger = logging.getLogger("tf2onnx")
    handler = logging.StreamHandler(sink)
    saved = (logger.handlers[:], logger.propagate, logger.level)
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
