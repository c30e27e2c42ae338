"""What an input model must satisfy before tfopt touches it, each failure one line.

onnx-ir loads almost anything and fails later, deep in a pass, when a lazy tensor is
read or a graph is sorted: a missing or short external-data file, a location outside
the model's folder, a cycle, an attribute of the wrong type. :func:`check_model_proto`
finds those at load time on the protobuf (weights not read), and normalizes what ONNX
allows but onnx-ir does not expect: the default domain spelled ``ai.onnx``, nodes out of
topological order, ``-1`` as an unknown dim. Two definitions of one name are refused:
ONNX Runtime takes the first initializer of a name, onnx-ir the last, so the fused
model would compute something else.
"""

from __future__ import annotations

import errno
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import onnx
import onnx_ir as ir
from onnx import AttributeProto, TensorProto

from ..errors import TfoptError, first_line

DEFAULT_DOMAIN_ALIAS = "ai.onnx"
_SUBGRAPH_TYPES = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
_DTYPE_ATTRIBUTES = ("to", "dtype", "output_datatype")  # Cast.to, EyeLike/Random*.dtype, ...: a TensorProto type

# Typed (non-raw) field and values per element for the types whose count is simple to check.
_TYPED_FIELDS = {
    TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1), TensorProto.UINT64: ("uint64_data", 1),
    TensorProto.INT32: ("int32_data", 1), TensorProto.INT16: ("int32_data", 1), TensorProto.INT8: ("int32_data", 1),
    TensorProto.UINT16: ("int32_data", 1), TensorProto.UINT8: ("int32_data", 1), TensorProto.BOOL: ("int32_data", 1),
    TensorProto.FLOAT16: ("int32_data", 1), TensorProto.BFLOAT16: ("int32_data", 1),
}


def check_input_file(path: Path) -> None:
    """The path names a readable, non-empty regular file (symlinks followed, loops refused)."""
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TfoptError(f"{path}: is a symlink loop, not an .onnx file") from None
        if exc.errno == errno.ENOENT:
            dangling = " (a symlink to a missing file)" if path.is_symlink() else ""
            raise TfoptError(f"{path}: no such file{dangling}") from None
        raise TfoptError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if path.is_dir():
        raise TfoptError(f"{path}: is a directory, expected an .onnx file")
    if info.st_size == 0:
        raise TfoptError(f"{path}: empty file, not an ONNX model")


def check_model_proto(model: onnx.ModelProto, folder: Path) -> None:
    """Refuse (one-line :class:`TfoptError`) a model tfopt cannot process faithfully; normalize the rest in place.

    ``folder`` is where external-data locations are resolved: the model file's folder.
    """
    graph = model.graph
    if len(graph.node) == 0:
        raise TfoptError("the ONNX graph has no nodes")
    if len(graph.output) == 0:
        raise TfoptError("the ONNX graph has no outputs")
    if not 0 <= model.ir_version <= onnx.IR_VERSION:  # ONNX Runtime loads 0-2 too, so they pass
        raise TfoptError(f"IR version {model.ir_version} is not one onnx {onnx.__version__} knows (up to {onnx.IR_VERSION})")
    opsets = _normalized_opsets(model)
    _check_names(graph)
    sort_nodes(graph)
    _check_nodes(graph, model.ir_version, opsets)
    _check_value_types(graph)
    for tensor in _tensors(graph):
        _check_tensor(tensor, folder)


def _normalized_opsets(model: onnx.ModelProto) -> dict[str, int]:
    """Domain -> version; ``ai.onnx`` (the spec's alias for the default domain) becomes ``""``."""
    opsets: dict[str, int] = {}
    for opset in model.opset_import:
        if opset.domain == DEFAULT_DOMAIN_ALIAS:
            opset.domain = ""
        if opset.domain in opsets and opsets[opset.domain] != opset.version:
            raise TfoptError(f"the model imports operator set {opset.domain or DEFAULT_DOMAIN_ALIAS!r} twice "
                             f"(versions {opsets[opset.domain]} and {opset.version})")
        opsets[opset.domain] = opset.version
    if "" not in opsets:
        raise TfoptError("the model imports no version of the standard ONNX operator set (ai.onnx)")
    newest = onnx.defs.onnx_opset_version()
    if not 1 <= opsets[""] <= newest:
        raise TfoptError(f"opset {opsets['']} is not a version of the ONNX operator set (1..{newest} in onnx {onnx.__version__})")
    unique = {}
    for opset in model.opset_import:  # drop the now-duplicate entries
        unique.setdefault(opset.domain, opset)
    if len(unique) != len(model.opset_import):
        kept = [onnx.OperatorSetIdProto(domain=o.domain, version=o.version) for o in unique.values()]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.domain == DEFAULT_DOMAIN_ALIAS:
                node.domain = ""
    for function in model.functions:
        for node in function.node:
            if node.domain == DEFAULT_DOMAIN_ALIAS:
                node.domain = ""
    return opsets


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies) in it."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _graphs(subgraph)


def _describe(node: onnx.NodeProto) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"


def _check_names(graph: onnx.GraphProto) -> None:
    """Every value defined once; every value read or output is defined."""
    initializer_names = [tensor.name for tensor in graph.initializer]
    seen: set[str] = set()
    for name in initializer_names:
        if name in seen:
            raise TfoptError(f"initializer {name!r} is defined twice (ONNX Runtime would use the first, onnx-ir the last)")
        seen.add(name)
    input_names: set[str] = set()
    for value in graph.input:
        if value.name in input_names:
            raise TfoptError(f"graph input {value.name!r} is declared twice")
        input_names.add(value.name)
    defined = set(initializer_names) | input_names  # an initializer may also be an input (a default value)
    for node in graph.node:
        for name in node.output:
            if not name:
                continue
            if name in defined:
                raise TfoptError(f"value {name!r} is defined twice (second time as an output of {_describe(node)})")
            defined.add(name)
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                raise TfoptError(f"{_describe(node)} reads {name!r}, which nothing in the graph defines")
    for value in graph.output:
        if value.name not in defined:
            raise TfoptError(f"graph output {value.name!r} is not computed by the graph")


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the graphs around it."""
    local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    local |= {name for node in graph.node for name in node.output}
    read = {name for node in graph.node for name in node.input if name}
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.type == AttributeProto.GRAPH else
                             attribute.graphs if attribute.type == AttributeProto.GRAPHS else []):
                read |= _outer_names(subgraph)
    return read - local


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put the nodes in topological order (ONNX requires it, ONNX Runtime does not); refuse a cycle."""
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    depends: list[set[int]] = []
    for index, node in enumerate(graph.node):
        names = set(node.input)
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.type == AttributeProto.GRAPH else
                             attribute.graphs if attribute.type == AttributeProto.GRAPHS else []):
                names |= _outer_names(subgraph)
        depends.append({producer[name] for name in names if name in producer})
    readers = defaultdict(list)
    for index, sources in enumerate(depends):
        if index in sources:
            node = graph.node[index]
            raise TfoptError(f"the graph has a cycle: {_describe(node)} reads its own output")
        for source in sources:
            readers[source].append(index)
    waiting = [len(sources) for sources in depends]
    ready = [index for index, count in enumerate(waiting) if count == 0]
    order: list[int] = []
    while ready:
        index = ready.pop()
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if len(order) != len(graph.node):
        stuck = next(graph.node[index] for index, count in enumerate(waiting) if count)
        raise TfoptError(f"the graph has a cycle through {_describe(stuck)}")
    if order != sorted(order):
        order.sort(key=_stable_rank(order, depends))
        nodes = [graph.node[index] for index in order]
        del graph.node[:]
        graph.node.extend(nodes)


def _stable_rank(order: list[int], depends: list[set[int]]):
    """Sort key keeping the file's order wherever the dependencies allow (a topological rank, then position)."""
    depth = {}
    for index in order:  # ``order`` is topological, so every source already has its depth
        depth[index] = 1 + max((depth[source] for source in depends[index]), default=-1)
    return lambda index: (depth[index], index)


def _check_nodes(graph: onnx.GraphProto, ir_version: int, opsets: dict[str, int]) -> None:
    """onnx's own node check: the op exists at the model's opset, attributes have the schema's types."""
    context = onnx.checker.C.CheckerContext()
    context.ir_version = ir_version
    context.opset_imports = opsets
    for node in graph.node:
        if any(attribute.type in _SUBGRAPH_TYPES for attribute in node.attribute):
            _check_subgraph_node(node, opsets)  # the checker would need the enclosing scope to check the body
            continue
        try:
            onnx.checker.check_node(node, context)
        except Exception as exc:  # onnx.checker.ValidationError, and others for odd protos
            if first_line(exc).startswith("No Op registered for"):
                # onnx has no schema for it at this opset, but ONNX Runtime may have a kernel
                # (LayerNormalization below opset 17 is one): left to ORT and validation.
                continue
            raise TfoptError(f"{_describe(node)}: {first_line(exc)}") from None
        if node.domain in ("", "ai.onnx.ml"):
            for attribute in node.attribute:  # the checker checks an int's type, not that it names a data type
                if attribute.name in _DTYPE_ATTRIBUTES and attribute.type == AttributeProto.INT and not _known_type(attribute.i):
                    raise TfoptError(f"{_describe(node)}: attribute {attribute.name!r} = {attribute.i} is not an ONNX data type")


def _check_subgraph_node(node: onnx.NodeProto, opsets: dict[str, int]) -> None:
    """A node with a graph attribute: the graph is there, and each attribute has the type the op defines."""
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH and not attribute.HasField("g"):
            raise TfoptError(f"{_describe(node)}: attribute {attribute.name!r} is tagged GRAPH but holds no graph")
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(node.domain, 1), node.domain)
    except Exception:  # an op onnx does not define (custom domain): nothing more to compare with
        return
    for attribute in node.attribute:
        declared = schema.attributes.get(attribute.name)
        if declared is not None and int(declared.type) != attribute.type:
            raise TfoptError(f"{_describe(node)}: attribute {attribute.name!r} should be "
                             f"{AttributeProto.AttributeType.Name(int(declared.type))}, "
                             f"is {AttributeProto.AttributeType.Name(attribute.type) if attribute.type in AttributeProto.AttributeType.values() else attribute.type}")


def _check_value_types(graph: onnx.GraphProto) -> None:
    """Inputs and outputs have known element types; ``-1`` dims become unknown (what ONNX Runtime reads them as)."""
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for value in values:
            if value.type.WhichOneof("value") == "tensor_type" and not _known_type(value.type.tensor_type.elem_type):
                raise TfoptError(f"graph {kind} {value.name!r} has element type {value.type.tensor_type.elem_type}, "
                                 "which is not an ONNX tensor type")
    hints = []
    for value in graph.value_info:  # shape hints only: a broken one is dropped, not refused
        if value.type.WhichOneof("value") == "tensor_type" and not _known_type(value.type.tensor_type.elem_type):
            continue
        hints.append(value)
    if len(hints) != len(graph.value_info):
        kept = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in hints]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.WhichOneof("value") != "tensor_type":
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.WhichOneof("value") == "dim_value" and dim.dim_value < 0:
                dim.Clear()


def _known_type(elem_type: int) -> bool:
    try:
        return ir.DataType(elem_type) != ir.DataType.UNDEFINED
    except ValueError:
        return False


def _tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Initializers and tensor-valued attributes (Constant nodes), subgraphs included."""
    for each in _graphs(graph):
        yield from each.initializer
        for node in each.node:
            for attribute in node.attribute:
                if attribute.type == AttributeProto.TENSOR:
                    yield attribute.t
                elif attribute.type == AttributeProto.TENSORS:
                    yield from attribute.tensors


def _check_tensor(tensor: TensorProto, folder: Path) -> None:
    what = f"tensor {tensor.name!r}" if tensor.name else "a Constant's tensor"
    if not _known_type(tensor.data_type):
        raise TfoptError(f"{what} has data type {tensor.data_type}, which is not an ONNX tensor type")
    if any(dim < 0 for dim in tensor.dims):
        raise TfoptError(f"{what} has a negative dimension in its shape {list(tensor.dims)}")
    count = math.prod(tensor.dims)
    dtype = ir.DataType(tensor.data_type)
    if tensor.data_location == TensorProto.EXTERNAL:
        _check_external(tensor, what, count, dtype, folder)
        return
    if dtype == ir.DataType.STRING:
        if tensor.raw_data:
            raise TfoptError(f"{what} is a STRING tensor with raw bytes (strings must be in string_data)")
        if len(tensor.string_data) != count:
            raise TfoptError(f"{what} holds {len(tensor.string_data)} strings, its shape {list(tensor.dims)} needs {count}")
        return
    needed = math.ceil(count * dtype.bitwidth / 8)
    if tensor.HasField("raw_data"):
        have = len(tensor.raw_data)
        if have != needed:
            raise TfoptError(f"{what} holds {have} bytes, its shape {list(tensor.dims)} of {dtype.name} needs {needed}")
        return
    if tensor.data_type in _TYPED_FIELDS:
        field, per_element = _TYPED_FIELDS[tensor.data_type]
        have = len(getattr(tensor, field))
        if have != count * per_element:
            raise TfoptError(f"{what} holds {have} values, its shape {list(tensor.dims)} needs {count * per_element}")


def _external_entries(tensor: TensorProto, what: str) -> tuple[str, int, int | None]:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    if not location:
        raise TfoptError(f"{what} is stored as external data but names no file")
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else None
        length = length or None  # 0 reads as "not given" (ONNX Runtime and onnx-ir read the shape's bytes)
    except ValueError:
        raise TfoptError(f"{what}: external data offset/length are not integers "
                         f"({entries.get('offset')!r}, {entries.get('length')!r})") from None
    if offset < 0 or (length is not None and length < 0):
        raise TfoptError(f"{what}: negative external data offset or length ({offset}, {length})")
    return location, offset, length


def _check_external(tensor: TensorProto, what: str, count: int, dtype: ir.DataType, folder: Path) -> None:
    """The data file is inside the model's folder (also after symlinks), exists, and holds the tensor's bytes.

    The folder rules are onnx-ir's (it refuses the same files, but only when a pass first reads the weight).
    """
    location, offset, length = _external_entries(tensor, what)
    if os.path.isabs(location) or os.path.normpath(location).split(os.sep)[0] == os.pardir:
        raise TfoptError(f"{what}: external data location {location!r} is outside the model's folder ({folder}); refusing to read it")
    path = folder / location
    base_real = os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.commonpath([base_real, real]) != base_real:
        raise TfoptError(f"{what}: external data file {location!r} is a link to {real}, outside the model's folder; refusing to read it")
    try:
        info = os.stat(real)
    except OSError as exc:
        raise TfoptError(f"{what}: external data file {location!r} is missing beside the model ({exc.strerror})") from None
    if not path.is_file():
        raise TfoptError(f"{what}: external data location {location!r} is not a file")
    if info.st_nlink > 1:
        raise TfoptError(f"{what}: external data file {location!r} has {info.st_nlink} hard links; onnx-ir refuses such files (copy it)")
    if info.st_size == 0:
        raise TfoptError(f"{what}: external data file {location!r} is empty")
    available = info.st_size - offset
    if available < 0:
        raise TfoptError(f"{what}: external data offset {offset} is past the end of {location!r} ({info.st_size} bytes)")
    if dtype == ir.DataType.STRING:
        raise TfoptError(f"{what}: STRING tensors cannot be stored as external data")
    needed = math.ceil(count * dtype.bitwidth / 8)
    stored = available if length is None else length
    if length is not None and length > available:
        raise TfoptError(f"{what}: external data {location!r} is too short: {length} bytes from offset {offset}, "
                         f"the file has {available}")
    if stored < needed or (length is not None and length != needed):
        raise TfoptError(f"{what}: external data {location!r} holds {stored} bytes from offset {offset}, "
                         f"its shape {list(tensor.dims)} of {dtype.name} needs {needed}")
