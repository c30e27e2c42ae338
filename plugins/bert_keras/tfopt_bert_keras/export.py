"""Keras -> ONNX by one of two routes, both tf2onnx underneath.

- ``tf2onnx`` (default): ``tf2onnx.convert.from_function`` on a tf.function wrapper whose
  named TensorSpec signature flattens keras-hub's dict inputs into ``token_ids``,
  ``padding_mask``, ``segment_ids``. Works for Keras 3 and tf_keras models alike, and is
  the same conversion bert_tf uses, so one set of fusion rules covers both adapters.
- ``keras``: Keras 3's own ``model.export(path, format="onnx")`` (Keras 3 models only).
  It calls the same ``from_function`` after a ``patch_tf2onnx()`` that, for numpy 2,
  replaces tf2onnx's constant-folding rewriter with one that folds nothing and sets
  ``np.object``; the patch is process-wide and permanent, so it is undone here after the
  export to keep later conversions in the process identical. Inputs come out in
  alphabetical order.

Not used: ``tf2onnx.convert.from_keras`` (fails on keras-hub's dict inputs; for tf_keras
models it converts the same graph as from_function), and keras2onnx (abandoned: it
installs but fails to import, ``onnx.mapping`` and ``tensorflow.python.keras.applications``
are gone).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import onnx

from tfopt.errors import TfoptError, first_line
from tfopt.results import ExportResult, RunContext
from tfopt_bert_tf.convert import (
    DEFAULT_OPSET,
    Unconvertible,
    captured_tf2onnx_log,
    leftover_ops,
    name_dynamic_dims,
    unsupported_ops,
    write_atomically,
)
from tfopt_bert_tf.erfc import register_erfc_handler
from tfopt.graph.io import read_io_spec
from tfopt_bert_tf.export import EXPORTER, export_with_tf2onnx, exported_path
from tfopt_bert_tf.inputs import dummy_inputs
from tfopt_bert_tf.source import TfSource

from .models import is_tf_keras_model, layer_of_node

ROUTES = ("tf2onnx", "keras")
DEFAULT_ROUTE = "tf2onnx"


def export_keras(ctx: RunContext, source: TfSource) -> ExportResult:
    route = ctx.option("route", DEFAULT_ROUTE)
    if route not in ROUTES:
        raise TfoptError(f"unknown route {route!r}; known: {', '.join(ROUTES)}")
    explain = layer_explainer(source.model)
    if route == "tf2onnx":
        return export_with_tf2onnx(ctx, source, explain=explain)
    return export_with_keras_export(ctx, source, explain=explain)


def layer_explainer(model):
    """Unconvertible op -> text naming the Keras layer it came from, where its name scope tells."""

    def explain(item: Unconvertible) -> str:
        layer = layer_of_node(model, item.node) if model is not None else None
        where = f" in layer '{layer}'" if layer else ""
        return f"{item.op_type}{where} (node {item.node})"

    return explain


def export_with_keras_export(ctx: RunContext, source: TfSource, *, explain=None) -> ExportResult:
    """Keras 3's ``model.export(format="onnx")``, checked and renamed like the tf2onnx route."""
    import keras

    model = source.model
    if not isinstance(model, keras.Model) or is_tf_keras_model(model):
        raise TfoptError(f"{source.name}: route 'keras' needs a Keras 3 model (this is {type(model).__name__}); use route 'tf2onnx'")
    opset = int(ctx.option("opset", DEFAULT_OPSET))
    path = exported_path(ctx)
    ctx.progress(f"converting {source.name} with keras' model.export (opset {opset}) ...")
    start = time.perf_counter()
    register_erfc_handler()  # tf2onnx's handler registry is global: Keras' export uses it too
    _call_once(source)  # Keras refuses to export a model that was never called
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmp_dir / path.name
        log = io.StringIO()
        with _tf2onnx_unpatched_afterwards(), captured_tf2onnx_log(log), _quiet():
            try:
                model.export(str(tmp), format="onnx", verbose=False, opset_version=opset)
            except Exception as exc:
                raise TfoptError(f"{source.name}: keras' ONNX export failed ({first_line(exc)})") from None
        converted = onnx.load(str(tmp))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    failed = unsupported_ops(log.getvalue()) or leftover_ops(converted)
    if failed:
        parts = [explain(item) if explain else item.describe() for item in failed]
        raise TfoptError(f"{source.name}: keras' ONNX export cannot convert op(s) {', '.join(parts)}")
    name_dynamic_dims(converted)
    write_atomically(converted, path)
    return ExportResult(model_path=path, io=read_io_spec(path), info=source.info, exporter=f"{EXPORTER}:keras-export",
                        seconds=time.perf_counter() - start)


def _call_once(source: TfSource) -> None:
    dtypes = {spec.name: spec.dtype.as_numpy_dtype().dtype.name for spec in source.input_signature}
    feed = dummy_inputs(source.roles(), dtypes, vocab_size=source.vocab_size, pad_token_id=source.pad_token_id,
                        batch_sizes=[1], sequence_lengths=[4])[0]
    source.run(feed, eager=source.eager is not None)


@contextlib.contextmanager
def _quiet():
    """Keras' export prints progress and its patch warns about np.object: neither is the user's business."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _tf2onnx_unpatched_afterwards():
    """Undo keras' process-wide tf2onnx patch (see the module docstring) once its export is done."""
    import tf2onnx

    saved = (tf2onnx.tfonnx.rewrite_constant_fold, tf2onnx.graph.Node.get_value_attr)
    try:
        yield
    finally:
        tf2onnx.tfonnx.rewrite_constant_fold, tf2onnx.graph.Node.get_value_attr = saved
