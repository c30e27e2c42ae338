"""Longformer -> ONNX with torch's dynamo exporter: one LongformerAttention node per layer, dynamic batch and sequence.

HF's ``LongformerModel`` itself does not export (data-dependent ``.item()`` branches; the
TorchScript exporter bakes in the traced shape). :class:`~.modeling.LongformerForExport` runs
the same modules with the attention as one op; ``torch.onnx.ops.symbolic`` writes it as a
``tfopt.longformer::LongformerAttention`` node, and the model gets a local function with its body
in standard ops (:mod:`.onnx_attention`), so ``exported.onnx`` runs on ONNX Runtime's CPU provider.
The legacy TorchScript exporter is not offered: it cannot carry the op with dynamic shapes.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from tfopt.errors import TfoptError, first_line
from tfopt.graph.io import EXTERNAL_DATA_THRESHOLD, read_io_spec, save_model
from tfopt.results import TARGETS, ExportResult, RunContext
from tfopt.torch_kit import quiet_export

from .cache import source_model
from .inputs import INPUT_NAMES, token_feeds
from .modeling import DOMAIN, LongformerForExport
from .models import SourceModel
from .onnx_attention import function_proto

OPSET = 20
OUTPUT_NAME = "last_hidden_state"
EXPORTED_FILE = "exported.onnx"


def export_source(ctx: RunContext) -> ExportResult:
    """The ``export`` hook."""
    exporter = ctx.option("exporter") or "dynamo"
    if exporter != "dynamo":
        raise TfoptError(f"longformer exports with the dynamo exporter only (got --exporter {exporter})")
    target = ctx.option("target", "cpu")
    if target not in TARGETS:
        raise TfoptError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    source = source_model(ctx)
    return export_model(ctx, source, opset=int(ctx.option("opset", OPSET)))


def export_model(ctx: RunContext, source: SourceModel, *, opset: int = OPSET) -> ExportResult:
    from onnx_ir import serde

    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.work_dir / EXPORTED_FILE
    ctx.progress(f"exporting {source.name} with the dynamo exporter (opset {opset}) ...")
    start = time.perf_counter()
    wrapper = LongformerForExport(source.model).eval()
    # batch 2 with row 2 padded, a length that is no multiple of the window, global CLS tokens
    sequence = min(2 * source.window + 3, source.max_sequence_length)
    feed = token_feeds(2, sequence, vocab_size=source.vocab_size, pad_token_id=source.pad_token_id, rng=np.random.default_rng(0))
    example = {name: torch.from_numpy(feed[name]) for name in INPUT_NAMES}
    batch_dim = torch.export.Dim("batch")
    sequence_dim = torch.export.Dim("sequence", max=source.max_sequence_length)
    large = sum(p.numel() * p.element_size() for p in source.model.parameters()) >= EXTERNAL_DATA_THRESHOLD
    with quiet_export():
        try:
            program = torch.onnx.export(
                wrapper, (), kwargs=example, dynamo=True, opset_version=opset,
                input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                dynamic_shapes={name: {0: batch_dim, 1: sequence_dim} for name in INPUT_NAMES},
            )
        except Exception as exc:
            raise TfoptError(f"{source.name}: the dynamo exporter failed ({first_line(exc)})") from None
    model = program.model
    function = serde.deserialize_function(function_proto(opset))
    model.functions[function.identifier()] = function
    model.opset_imports[DOMAIN] = 1
    save_model(model, path, external=large)
    return ExportResult(
        model_path=path, io=read_io_spec(path), info=source.info, exporter="dynamo", seconds=time.perf_counter() - start
    )
