"""The export stage: a TfSource through tf2onnx into ``work_dir/exported.onnx``."""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from tfopt.errors import TfoptError
from tfopt.results import ExportResult, IOSpec, RunContext

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


def read_io_spec(path: Path) -> IOSpec:
    """The IO spec as the written graph declares it (not as we asked for it)."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise TfoptError(f"{path}: the converter wrote no readable ONNX model ({exc})") from None

    def dtype(value: onnx.ValueInfoProto) -> str:
        return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name

    def symbolic_axes(value: onnx.ValueInfoProto) -> dict[int, str]:
        return {axis: dim.dim_param for axis, dim in enumerate(value.type.tensor_type.shape.dim) if dim.dim_param}

    return IOSpec(
        inputs={value.name: dtype(value) for value in graph.input},
        outputs=[value.name for value in graph.output],
        dynamic_axes={value.name: axes for value in (*graph.input, *graph.output) if (axes := symbolic_axes(value))},
    )
