"""What an input model must satisfy before tfopt touches it, each failure one line.

onnx-ir loads almost anything and fails later, deep in a pass, when a lazy tensor is
read or a graph is sorted: a missing or short external-data file, a location outside
the model's folder, a cycle, an attribute of the wrong type. :func:`check_model_proto`
finds those at load time on the protobuf (weights not read), and normalizes what ONNX
allows but onnx-ir does not expect: the default domain spelled ``ai.onnx``, nodes out of
topological order, ``-1`` as an unknown dim.

It also repairs what ONNX Runtime itself runs although ONNX forbids it, the way ONNX
Runtime reads it (each repair is a note: :func:`check_model_proto` returns them):

- ``com.microsoft`` (contrib) nodes without an opset import for that domain: the import
  (version 1) is added.
- A name defined by initializers and Constant nodes only (never by a graph input or another
  node): ONNX Runtime keeps one tensor per name and every reader reads it, also the nodes
  before a later Constant; the repair keeps the same one (:func:`_repair_constant_redefinitions`)
  and drops the others. Any other double definition is refused, as ONNX Runtime refuses it
  ("Duplicate definition of name").
- Ops onnx has no schema for at the model's opset are judged against ONNX Runtime's own
  schemas: LayerNormalization below opset 17, SimplifiedLayerNormalization (ONNX Runtime
  registers them in the default domain) pass; an op neither knows in the default or
  ``com.microsoft`` domain is refused.
- Graph inputs that declare no shape get one the graph implies (:func:`input_shapes_from_graph`),
  so that fusion sees ranks and validation can generate feeds.
"""

from __future__ import annotations

import errno
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir
from onnx import AttributeProto, TensorProto

from ..errors import TfoptError, first_line
from .ort_schemas import ort_registers

DEFAULT_DOMAIN_ALIAS = "ai.onnx"
CONTRIB_DOMAIN = "com.microsoft"
_CONSTANT_VALUES = ("value", "value_float", "value_floats", "value_int", "value_ints", "value_string", "value_strings", "sparse_value")
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


@dataclass
class Repairs:
    """What :func:`check_model_proto` changed: one note per repair, and the shapes given to inputs that declared
    none (None for an input the graph implies no shape for: it stays without one)."""

    notes: list[str] = field(default_factory=list)
    input_shapes: dict[str, list[int | str] | None] = field(default_factory=dict)


def check_model_proto(model: onnx.ModelProto, folder: Path) -> Repairs:
    """Refuse (one-line :class:`TfoptError`) a model tfopt cannot process faithfully; normalize and repair
    the rest in place, and say what was repaired.

    ``folder`` is where external-data locations are resolved: the model file's folder.
    """
    graph = model.graph
    if len(graph.node) == 0:
        raise TfoptError("the ONNX graph has no nodes")
    if len(graph.output) == 0:
        raise TfoptError("the ONNX graph has no outputs")
    if not 0 <= model.ir_version <= onnx.IR_VERSION:  # ONNX Runtime loads 0-2 too, so they pass
        raise TfoptError(f"IR version {model.ir_version} is not one onnx {onnx.__version__} knows (up to {onnx.IR_VERSION})")
    notes: list[str] = []
    _check_text(model, notes)
    opsets = _normalized_opsets(model, notes)
    _check_names(graph, notes, folder)
    sort_nodes(graph)
    _check_nodes(graph, model.ir_version, opsets, {(f.domain, f.name) for f in model.functions})
    _check_value_types(graph)
    for tensor in _tensors(graph):
        _check_tensor(tensor, folder)
    shapeless = [value.name for value in shapeless_inputs(graph)]
    shapes: dict[str, list[int | str] | None] = dict.fromkeys(shapeless)
    shapes.update(input_shapes_from_graph(model) if shapeless else {})
    for value in graph.input:
        if shapes.get(value.name):
            set_shape(value, shapes[value.name])
            notes.append(f"input {value.name!r} declares no shape; took {_shape_text(shapes[value.name])} from the graph")
    return Repairs(notes, shapes)


# String fields that only describe (names of the producer, the graph, nodes; documentation; symbols of
# dims): text that is not UTF-8 there is decoded with replacement characters. Anywhere else (value,
# op, domain and attribute names, external-data entries) the model is refused: onnx-ir cannot write
# such a name back, and ONNX Runtime's Python API cannot show it.
_DESCRIPTIVE_TEXT = {
    ("ModelProto", "producer_name"), ("ModelProto", "producer_version"), ("ModelProto", "domain"),
    ("ModelProto", "doc_string"), ("GraphProto", "name"), ("GraphProto", "doc_string"), ("NodeProto", "name"),
    ("NodeProto", "doc_string"), ("ValueInfoProto", "doc_string"), ("TensorProto", "doc_string"),
    ("AttributeProto", "doc_string"), ("FunctionProto", "doc_string"), ("TypeProto", "denotation"),
    ("Dimension", "denotation"), ("Dimension", "dim_param"), ("metadata_props", "key"), ("metadata_props", "value"),
}


_PROTO_WORDS = {
    "NodeProto": "a node", "ValueInfoProto": "a value", "TensorProto": "a tensor", "AttributeProto": "an attribute",
    "GraphProto": "a graph", "OperatorSetIdProto": "an opset import", "StringStringEntryProto": "an external data entry",
    "FunctionProto": "a function", "ModelProto": "the model", "SparseTensorProto": "a sparse tensor",
    "Dimension": "a graph input's or output's dim",
}


def _check_text(model: onnx.ModelProto, notes: list[str]) -> None:
    """Every string field holds UTF-8 text (protobuf hands out ``bytes`` for one that does not)."""
    repaired: list[str] = []

    def walk(message, owner: str, io: bool = False) -> None:
        for descriptor, value in message.ListFields():
            if descriptor.type == descriptor.TYPE_MESSAGE:
                context = "metadata_props" if descriptor.name == "metadata_props" else None
                # ONNX Runtime's Python API decodes the dims of graph inputs and outputs: refused there
                inner = io or (owner == "GraphProto" and descriptor.name in ("input", "output"))
                for item in (value if descriptor.is_repeated else [value]):
                    walk(item, context or type(item).__name__, inner)
            elif descriptor.type == descriptor.TYPE_STRING:
                items = list(value) if descriptor.is_repeated else [value]
                if not any(isinstance(item, bytes) for item in items):
                    continue
                if (owner, descriptor.name) not in _DESCRIPTIVE_TEXT or (io and descriptor.name == "dim_param"):
                    raw = next(item for item in items if isinstance(item, bytes))
                    what = _PROTO_WORDS.get(owner, owner)
                    raise TfoptError(f"{what}'s {descriptor.name} is not UTF-8 text ({raw[:40]!r}); the file is damaged")
                text = [item.decode("utf-8", "replace") if isinstance(item, bytes) else item for item in items]
                if descriptor.is_repeated:
                    getattr(message, descriptor.name)[:] = text
                else:
                    setattr(message, descriptor.name, text[0])
                repaired.append(f"{owner}.{descriptor.name}")

    walk(model, "ModelProto")
    if repaired:
        notes.append(f"text that is not UTF-8 decoded with replacement characters in {', '.join(sorted(set(repaired)))}")


def _normalized_opsets(model: onnx.ModelProto, notes: list[str]) -> dict[str, int]:
    """Domain -> version; ``ai.onnx`` (the spec's alias for the default domain) becomes ``""``;
    contrib nodes without a ``com.microsoft`` import get it (version 1, as ONNX Runtime reads them)."""
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
    for graph in graphs_within(model.graph):
        for node in graph.node:
            if node.domain == DEFAULT_DOMAIN_ALIAS:
                node.domain = ""
    for function in model.functions:
        for node in function.node:
            if node.domain == DEFAULT_DOMAIN_ALIAS:
                node.domain = ""
    if CONTRIB_DOMAIN not in opsets and any(node.domain == CONTRIB_DOMAIN for graph in graphs_within(model.graph) for node in graph.node):
        model.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
        opsets[CONTRIB_DOMAIN] = 1
        notes.append(f"added the missing opset import {CONTRIB_DOMAIN!r} version 1 for its contrib nodes")
    return opsets


def graphs_within(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies) in it."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                yield from graphs_within(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from graphs_within(subgraph)


def _describe(node: onnx.NodeProto) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"


def _check_names(graph: onnx.GraphProto, notes: list[str], folder: Path) -> None:
    """Every value defined once (repairing what ONNX Runtime reads as one definition); every value read or output is defined."""
    input_names: set[str] = set()
    for value in graph.input:
        if value.name in input_names:
            raise TfoptError(f"graph input {value.name!r} is declared twice")
        input_names.add(value.name)
    _repair_constant_redefinitions(graph, input_names, notes, folder)
    initializer_names: set[str] = set()
    for tensor in graph.initializer:
        if tensor.name in initializer_names:  # what the repair leaves: no one tensor ONNX Runtime is known to read
            also = " and is a graph input too" if tensor.name in input_names else ", in ways ONNX Runtime reads differently"
            raise TfoptError(f"initializer {tensor.name!r} is defined twice{also}")
        initializer_names.add(tensor.name)
    defined = initializer_names | input_names  # an initializer may also be an input (a default value)
    for node in graph.node:
        for name in node.output:
            if not name:
                continue
            if name in defined:
                raise TfoptError(f"value {name!r} is defined twice (again by {_describe(node)})")
            defined.add(name)
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                raise TfoptError(f"{_describe(node)} reads {name!r}, which nothing in the graph defines")
    for value in graph.output:
        if value.name not in defined:
            raise TfoptError(f"graph output {value.name!r} is not computed by the graph")


# ONNX Runtime 1.32 keeps one tensor of a name that initializers and Constant nodes define more than
# once (it warns "the model will use the latest encountered initializer"). Measured: the last one,
# except when every definition is stored in the model file with this many bytes or more: the first.
ORT_FIRST_DEFINITION_BYTES = 128


def _repair_constant_redefinitions(graph: onnx.GraphProto, input_names: set[str], notes: list[str], folder: Path) -> None:
    """Keep one definition of a name that initializers and Constant nodes (only) define more than once.

    ONNX Runtime turns Constant nodes into initializers and keeps one tensor per name; every
    reader, wherever it is, reads that one (also the readers before a later Constant node).
    Definitions that hold the same tensor are one: the first is kept. Different tensors are kept
    as ONNX Runtime 1.32 picks them (:data:`ORT_FIRST_DEFINITION_BYTES`): the last one when each
    is under 128 bytes or each is external data, the first when each is stored in the file with
    128 bytes or more. ONNX Runtime's own test model ``gpt2_past.onnx`` redefines 48 scalar
    Constants after their readers: the readers get the later value. Validation compares the
    result with ONNX Runtime on the input, so another version's pick fails validation instead of
    passing silently. Any other mix, a graph input or another node defining the name: left to
    :func:`_check_names`, which refuses it (ONNX Runtime refuses a node output defined twice too).
    """
    definitions: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for index, tensor in enumerate(graph.initializer):
        definitions[tensor.name].append(("initializer", index))
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name:
                definitions[name].append(("node", index))
    drop_initializers: set[int] = set()
    drop_nodes: set[int] = set()
    for name, where in definitions.items():
        if len(where) < 2 or name in input_names:
            continue
        if any(kind == "node" and (graph.node[index].op_type != "Constant" or graph.node[index].domain != ""
                                   or len(graph.node[index].output) != 1) for kind, index in where):
            continue
        arrays = [_definition_array(graph, kind, index, folder) for kind, index in where]
        if any(array is None for array in arrays):
            continue  # a value that cannot be read (sparse, broken external data): refused as it is
        external = [kind == "initializer" and graph.initializer[index].data_location == TensorProto.EXTERNAL
                    for kind, index in where]
        if all(_same_tensor(arrays[0], array) for array in arrays[1:]):
            kept, how = where[0], "they hold the same tensor"
        elif all(external) or (not any(external) and all(a.nbytes < ORT_FIRST_DEFINITION_BYTES for a in arrays)):
            kept, how = where[-1], "the last, which ONNX Runtime reads everywhere"
        elif not any(external) and all(a.nbytes >= ORT_FIRST_DEFINITION_BYTES for a in arrays):
            kept, how = where[0], "the first, which ONNX Runtime reads everywhere (128 bytes and more each)"
        else:
            continue
        for kind, index in where:
            if (kind, index) != kept:
                (drop_initializers if kind == "initializer" else drop_nodes).add(index)
        notes.append(f"value {name!r} is defined {len(where)} times; kept {how}")
    if drop_initializers:
        kept_tensors = [t for index, t in enumerate(graph.initializer) if index not in drop_initializers]
        del graph.initializer[:]
        graph.initializer.extend(kept_tensors)
    if drop_nodes:
        kept_nodes = [n for index, n in enumerate(graph.node) if index not in drop_nodes]
        del graph.node[:]
        graph.node.extend(kept_nodes)


def _definition_array(graph: onnx.GraphProto, kind: str, index: int, folder: Path):
    """The tensor an initializer or a Constant node defines, as numpy; None when it cannot be read."""
    try:
        if kind == "initializer":
            return onnx.numpy_helper.to_array(graph.initializer[index], base_dir=str(folder))
        node = graph.node[index]
        values = [attribute for attribute in node.attribute if attribute.name in _CONSTANT_VALUES]
        if len(values) != 1 or values[0].name == "sparse_value":
            return None
        value = onnx.helper.get_attribute_value(values[0])
        if isinstance(value, onnx.TensorProto):
            return onnx.numpy_helper.to_array(value, base_dir=str(folder))
        if values[0].name in ("value_float", "value_floats"):
            return np.asarray(value, dtype="float32")
        if values[0].name in ("value_int", "value_ints"):
            return np.asarray(value, dtype="int64")
        return np.asarray(value, dtype=object)
    except Exception:  # unreadable data: the tensor checks below name it
        return None


def _same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return list(a.ravel()) == list(b.ravel()) if a.dtype == object else a.tobytes() == b.tobytes()


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


def _check_nodes(graph: onnx.GraphProto, ir_version: int, opsets: dict[str, int], functions: set[tuple[str, str]] = frozenset()) -> None:
    """onnx's own node check: the op exists at the model's opset, attributes have the schema's types.

    An op onnx has no schema for at that opset is judged by ONNX Runtime's schemas
    (:func:`.ort_schemas.ort_registers`): ONNX Runtime registers LayerNormalization in the default domain
    for every opset, SimplifiedLayerNormalization too. ``functions``: (domain, name) of the
    model's own functions, which are ops of their own.
    """
    context = onnx.checker.C.CheckerContext()
    context.ir_version = ir_version
    context.opset_imports = opsets
    for node in graph.node:
        if (node.domain, node.op_type) in functions:
            continue
        if node.op_type == "Constant" and node.domain == "":
            values = [attribute.name for attribute in node.attribute if attribute.name in _CONSTANT_VALUES]
            if len(values) != 1:
                raise TfoptError(f"{_describe(node)} holds {'no value' if not values else 'several values (' + ', '.join(values) + ')'}")
        if any(attribute.type in _SUBGRAPH_TYPES for attribute in node.attribute):
            _check_subgraph_node(node, opsets)  # the checker would need the enclosing scope to check the body
            continue
        if node.domain == CONTRIB_DOMAIN:  # onnx knows no contrib op (its checker passes them all)
            _check_registered(node, opsets)
            continue
        try:
            onnx.checker.check_node(node, context)
        except Exception as exc:  # onnx.checker.ValidationError, and others for odd protos
            if first_line(exc).startswith("No Op registered for"):
                # onnx has no schema for it at this opset; ONNX Runtime's schemas decide in the
                # default domain, a custom domain's ops are left to ONNX Runtime and validation.
                if node.domain == "":
                    _check_registered(node, opsets)
                continue
            raise TfoptError(f"{_describe(node)}: {first_line(exc)}") from None
        if node.domain in ("", "ai.onnx.ml"):
            for attribute in node.attribute:  # the checker checks an int's type, not that it names a data type
                if attribute.name in _DTYPE_ATTRIBUTES and attribute.type == AttributeProto.INT and not _known_type(attribute.i):
                    raise TfoptError(f"{_describe(node)}: attribute {attribute.name!r} = {attribute.i} is not an ONNX data type")


def _check_registered(node: onnx.NodeProto, opsets: dict[str, int]) -> None:
    version = opsets.get(node.domain, 1)
    if ort_registers(node.op_type, node.domain, version) is False:
        raise TfoptError(f"{_describe(node)}: neither ONNX nor ONNX Runtime has an operator {node.op_type!r} "
                         f"in {node.domain or DEFAULT_DOMAIN_ALIAS} opset {version}")


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


# Ops whose output keeps the last axis of their first input (its width): looking through them
# from a shapeless input finds the weight or scale that tells the width.
_WIDTH_KEEPING_OPS = {
    "Identity", "Cast", "Dropout", "Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Reciprocal", "Exp", "Log",
    "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Softmax", "Add", "Sub", "Mul", "Div", "Pow", "Where",
    "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "ReduceMean",
}
_INT_TYPES = {TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT64,
              TensorProto.UINT32, TensorProto.UINT16, TensorProto.UINT8, TensorProto.BOOL}
_BINARY_OPS = ("Add", "Sub", "Mul", "Div", "Concat")


def shapeless_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (not initializers) that declare no shape at all (their rank is unknown)."""
    initializers = {tensor.name for tensor in graph.initializer}
    return [value for value in graph.input
            if value.name not in initializers and value.type.WhichOneof("value") == "tensor_type"
            and not value.type.tensor_type.HasField("shape")]


def input_shapes_from_graph(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Shapes for the inputs that declare none, where the graph implies them (the transformer convention).

    Integer inputs (ids, masks, positions) are (batch, sequence). A float input is
    (batch, sequence, width) when a MatMul weight, a LayerNorm scale or a per-feature
    constant it meets through elementwise ops gives the width (a Gemm's: (batch, width)).
    An input concatenated with or added to a value whose shape onnx's shape inference knows
    takes that shape (a concatenation axis becomes ``past_sequence``: a KV cache); a mask next
    to such a cache spans ``total_sequence``. Inputs the graph says nothing about are left out.
    """
    graph = model.graph
    missing = shapeless_inputs(graph)
    if not missing:
        return {}
    dims_of = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.type == AttributeProto.TENSOR:
                    dims_of[node.output[0]] = list(attribute.t.dims)
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for position, name in enumerate(node.input):
            readers[name].append((node, position))
    found: dict[str, list[int | str]] = {}
    for value in missing:
        if value.type.tensor_type.elem_type in _INT_TYPES:
            found[value.name] = ["batch", "sequence"]
        else:
            width = _width_from_readers(value.name, readers, dims_of)
            if width is not None:
                found[value.name] = ["batch", width[0]] if width[1] == 2 else ["batch", "sequence", width[0]]
    rest = [value.name for value in missing if value.name not in found]
    if rest:
        found.update(_shapes_from_partners(model, rest, found, readers))
    if any("past_sequence" in dims for dims in found.values()):
        for value in missing:
            if value.type.tensor_type.elem_type in _INT_TYPES and "mask" in value.name.lower():
                found[value.name] = ["batch", "total_sequence"]
    return found


def _width_from_readers(name: str, readers, dims_of: dict[str, list[int]]) -> tuple[int, int] | None:
    """(width, rank) of the value ``name`` from the constants it meets, looking forward through width-keeping ops."""
    queue, seen = [name], {name}
    while queue and len(seen) < 64:
        current = queue.pop(0)
        for node, position in readers.get(current, ()):
            others = [dims_of.get(other) for index, other in enumerate(node.input) if index != position and other]
            if node.op_type == "MatMul" and position == 0 and len(node.input) > 1 and len(dims_of.get(node.input[1], [])) == 2:
                return dims_of[node.input[1]][0], 3
            if node.op_type == "Gemm" and position == 0 and len(node.input) > 1 and len(dims_of.get(node.input[1], [])) == 2:
                trans_b = next((attribute.i for attribute in node.attribute if attribute.name == "transB"), 0)
                return dims_of[node.input[1]][1 if trans_b else 0], 2
            if node.op_type in ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization") and position == 0:
                scale = dims_of.get(node.input[2 if node.op_type == "SkipLayerNormalization" else 1]) if len(node.input) > 1 else None
                if scale and len(scale) == 1:
                    return scale[0], 3
            if node.op_type in ("Add", "Sub", "Mul", "Div"):
                widths = [dims[-1] for dims in others if dims and dims[-1] > 1]
                if widths:
                    return widths[0], 3
            if node.op_type in _WIDTH_KEEPING_OPS and node.output and node.output[0] and node.output[0] not in seen:
                seen.add(node.output[0])
                queue.append(node.output[0])
    return None


def _shapes_from_partners(model: onnx.ModelProto, names: list[str], known: dict[str, list[int | str]], readers) -> dict[str, list[int | str]]:
    """Shapes of inputs ``names`` from the value they are concatenated with or combined elementwise with."""
    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    for value in trial.graph.input:
        if value.name in known:
            set_shape(value, known[value.name])
    try:
        inferred = onnx.shape_inference.infer_shapes(trial, strict_mode=False).graph
    except Exception:  # the graph is broken in a way the loader or ONNX Runtime will name
        return {}
    shapes: dict[str, list[int | str]] = {}
    for value in (*inferred.value_info, *inferred.input, *inferred.output):
        tensor_type = value.type.tensor_type
        if value.type.WhichOneof("value") == "tensor_type" and tensor_type.HasField("shape"):
            dims = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor_type.shape.dim]
            if "?" not in dims:
                shapes.setdefault(value.name, dims)
    for tensor in model.graph.initializer:
        shapes.setdefault(tensor.name, list(tensor.dims))
    found: dict[str, list[int | str]] = {}
    for name in names:
        for node, position in readers.get(name, ()):
            if node.op_type not in _BINARY_OPS:
                continue
            partner = next((shapes[other] for index, other in enumerate(node.input) if index != position and other in shapes), None)
            if not partner:
                continue
            dims = list(partner)
            if node.op_type == "Concat":
                axis = next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 0)
                if not -len(dims) <= axis < len(dims) or axis % len(dims) == 0:
                    continue
                dims[axis % len(dims)] = "past_sequence"
            if dims and isinstance(dims[0], str) and dims[0].startswith("unk__"):
                dims[0] = "batch"
            if any(isinstance(dim, str) and dim.startswith("unk__") for dim in dims):
                continue  # a size shape inference could not tell (a head count): no shape to feed
            found[name] = dims
            break
    return found


def set_shape(value: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    """Declare ``dims`` (numbers or symbols) as the shape of a tensor value."""
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        else:
            entry.dim_param = dim


def _shape_text(dims: list[int | str]) -> str:
    return "[" + ", ".join(str(dim) for dim in dims) + "]"


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
    for each in graphs_within(graph):
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


def _short(path: str, limit: int = 40) -> str:
    """A path from the file (an external-data location) as the user can place it: its tail when it is long."""
    return path if len(path) <= limit else "..." + path[-(limit - 3):]


def _check_external(tensor: TensorProto, what: str, count: int, dtype: ir.DataType, folder: Path) -> None:
    """The data file is inside the model's folder (also after symlinks), exists, and holds the tensor's bytes.

    The folder rules are onnx-ir's (it refuses the same files, but only when a pass first reads the weight).
    """
    location, offset, length = _external_entries(tensor, what)
    if os.path.isabs(location) or os.path.normpath(location).split(os.sep)[0] == os.pardir:
        raise TfoptError(f"{what}: external data location {_short(location)!r} is outside the model's folder; refusing to read it")
    path = folder / location
    base_real = os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.commonpath([base_real, real]) != base_real:
        raise TfoptError(f"{what}: external data file {_short(location)!r} is a link out of the model's folder; refusing to read it")
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
