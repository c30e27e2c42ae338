"""The export stage: a TfSource through tf2onnx into ``work_dir/exported.onnx``."""

from __future__ import annotations

import time
from pathlib import Path

from tfopt.graph.io import read_io_spec
from tfopt.results import ExportResult, RunContext

from .convert import DEFAULT_OPSET, convert_function
from .source import TfSource

EXPORTED_FILE = "exported.onnx"
EXPORTER = "tf2onnx"


def export_with_tf2onnx(ctx: RunContext, source: TfSource, *, explain=None) -> ExportResult:
    """Convert ``source.function`` (dynamic batch and sequence, the source's input names) with tf2onnx."""
    opset = int(ctx.option("opset", DEFAULT_OPSET))
    path = exported_path(ctx)
    ctx.progress(f"converting {source.name} with tf2onnx (opset {opset}) ...")
    start = time.perf_counter()
    convert_function(source.function, source.input_signature, path, what=source.name, opset=opset, explain=explain)
    return ExportResult(model_path=path, io=read_io_spec(path), info=source.info, exporter=EXPORTER, seconds=time.perf_counter() - start)


def exported_path(ctx: RunContext) -> Path:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    return ctx.work_dir / EXPORTED_FILE
