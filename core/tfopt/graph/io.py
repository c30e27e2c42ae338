"""Loading and saving ONNX models: lazy external data, atomic writes, one-line errors."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import onnx
import onnx_ir as ir

from ..errors import TfoptError, first_line
from ..results import IOSpec
from .input_checks import check_input_file, check_model_proto
from .values import release_mapped

# ``ir.Model.meta`` keys: the notes of the repairs the loader made (``check_model_proto``), for fusion's
# notes, and the shapes it gave inputs that declared none (validation feeds the input those shapes).
LOAD_NOTES = "tfopt.load_notes"
INPUT_SHAPES = "tfopt.input_shapes"

# From this many bytes of weights on, tensors go to "<model>.data" beside the model: protobuf
# cannot hold 2 GB, and serializing a big single-file model costs twice its size in memory and
# seconds of time (bert-base: 3 s and +1.3 GB embedded vs 0.2 s and +0 MB external).
EXTERNAL_DATA_THRESHOLD = 100_000_000


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load a model; weights in external data stay on disk until they are used.

    What would fail later in a pass (bad external data, cycles, wrong attribute types,
    duplicate names, no outputs) is refused here in one line; what ONNX Runtime runs although
    ONNX forbids it is repaired, each repair noted in ``model.meta[LOAD_NOTES]`` (the shapes
    given to inputs that declared none in ``model.meta[INPUT_SHAPES]``): see :mod:`.input_checks`.
    """
    path = Path(path)
    check_input_file(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, truncated files
        raise TfoptError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    try:
        repairs = check_model_proto(proto, path.parent)
    except TfoptError as exc:
        raise TfoptError(f"{path}: {exc}") from None
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # what the checks above do not foresee, still one line
        raise TfoptError(f"{path}: not a usable ONNX model ({first_line(exc)})") from None
    ir.external_data.set_base_dir(model.graph, path.parent)  # where ir.load would resolve locations
    model.meta[LOAD_NOTES] = repairs.notes
    model.meta[INPUT_SHAPES] = repairs.input_shapes
    return model


def read_io_spec(path: str | os.PathLike) -> IOSpec:
    """The IO spec as the written graph declares it (not as the exporter was asked for it)."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise TfoptError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None

    def dtype(value: onnx.ValueInfoProto) -> str:
        try:
            return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        except (KeyError, ValueError, TypeError):  # not a tensor, or an element type numpy lacks
            raise TfoptError(f"{path}: input {value.name!r} has no numpy element type "
                             f"(ONNX type {value.type.tensor_type.elem_type})") from None

    def symbolic_axes(value: onnx.ValueInfoProto) -> dict[int, str]:
        return {axis: dim.dim_param for axis, dim in enumerate(value.type.tensor_type.shape.dim) if dim.dim_param}

    return IOSpec(
        inputs={value.name: dtype(value) for value in graph.input},
        outputs=[value.name for value in graph.output],
        dynamic_axes={value.name: axes for value in (*graph.input, *graph.output) if (axes := symbolic_axes(value))},
    )


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def uses_external_data(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def model_files(path: str | os.PathLike) -> set[Path]:
    """The files a model consists of: the .onnx file and every external-data file it names."""
    path = Path(path)
    files = {path.resolve()}
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # unreadable: only the file itself is known
        return files
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), None)
            if isinstance(location, str) and location:  # bytes: not UTF-8, refused by load_model
                try:
                    files.add((path.parent / location).resolve())
                except (RuntimeError, OSError):  # a symlink loop: load_model refuses it in one line
                    continue
    return files


def write_file(model: ir.Model, path: str | os.PathLike, external_data: str | None = None) -> None:
    """``ir.save``, unmapping each external-data weight of the input once it is copied out.

    A weight read from the input's data file stays mapped after ``ir.save`` read it, and a mapped
    page counts in the process's memory: writing a 5 GB model would end up holding all 5 GB.
    """
    written: list[ir.TensorProtocol] = []

    def release_previous(tensor: ir.TensorProtocol, _info) -> None:  # called before each tensor is written
        release_mapped(written)
        written[:] = [tensor]

    try:
        ir.save(model, path, external_data=external_data, callback=release_previous if external_data else None)
    finally:
        release_mapped(written)


def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    refuse: str | os.PathLike | None = None,
    check: Callable[[Path], None] | None = None,
    external: bool = False,  # True: weights to <name>.data whatever their size (the input had external data)
) -> Path:
    """Write ``model`` to ``path`` atomically: a temp dir beside it, then rename.

    Nothing is left half-written if saving fails. ``refuse`` is the input path:
    writing over any file the input consists of (the model or its external data) is
    an error (the input is never modified). Weights go to ``<name>.data`` beside the
    model when the model came with external data or holds at least
    :data:`EXTERNAL_DATA_THRESHOLD` bytes of them. ``check(temp_path)`` runs on the
    written temp copy before it is moved into place; if it raises, nothing is moved.
    """
    path = Path(path)
    data_name = path.name + ".data"
    if refuse is not None:
        taken = model_files(refuse)
        for target in (path, path.parent / data_name):
            if target.resolve() in taken:
                raise TfoptError(f"{target}: is part of the input model ({refuse}); refusing to overwrite the input")
    if path.is_dir():
        raise TfoptError(f"{path}: is a directory, expected an output .onnx file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    external = external or uses_external_data(model) or _weight_bytes(model) >= EXTERNAL_DATA_THRESHOLD
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp_model = tmp_dir / path.name
        write_file(model, tmp_model, data_name if external else None)
        if check is not None:
            check(tmp_model)
        if external:
            os.replace(tmp_dir / data_name, path.parent / data_name)
        elif (path.parent / data_name).is_file() and path.is_file():
            (path.parent / data_name).unlink()  # an earlier model's weights, no longer referenced
        os.replace(tmp_model, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path
