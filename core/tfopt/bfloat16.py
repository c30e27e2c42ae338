"""bf16 for the CUDA target: weights and activations in bfloat16, checked structurally and by emulation here.

bfloat16 keeps fp32's exponent (no overflow, unlike fp16) with an 8-bit mantissa. ONNX Runtime's
CPU provider has no bf16 kernels for the math ops (MatMul, Add, Softmax ... do not load), so on
this machine a bf16 model is checked two other ways:

- **structurally** (:func:`structural_problems`): every node's input and output types against its
  op's type constraints, from ONNX's schemas for the standard ops and ONNX Runtime's for its own
  (``SimplifiedLayerNormalization`` in the default domain included, which ``onnx.checker``
  refuses): each type one the op takes, one type per type parameter;
- **numerically, by emulation** (:func:`emulated`): the same graph with every bf16 value computed
  in fp32 and rounded to bf16 where the bf16 model stores it (``Cast`` to bf16 and back), and the
  bf16 weights read exactly. It runs on the CPU; its numbers are the bf16 model's up to what a
  kernel does inside one op (CUDA kernels accumulate in fp32 too).

What stays fp32 (:func:`convert`): the graph's inputs and outputs (callers feed the same arrays,
as with fp16); the rotary angles (positions x inverse frequencies and their Cos/Sin: an 8-bit
mantissa cannot hold position 1000 to better than 4, so the tables are computed in fp32 and
rounded once); the statistics outputs of the LayerNorm ops (their schemas want fp32); and any op
whose schema has no bf16 type.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir

from .graph.ort_schemas import ort_schema
from .graph.values import MS_DOMAIN, new_initializer

FLOAT, BF16 = ir.DataType.FLOAT, ir.DataType.BFLOAT16
_ANGLE_OPS = {"Cos", "Sin"}
# Outputs (by index) that the schemas type U: fp32 whatever the data's type.
_STATISTICS = {
    ("LayerNormalization", ""): {1, 2},
    ("SimplifiedLayerNormalization", ""): {1},
    ("SkipLayerNormalization", MS_DOMAIN): {1, 2},
    ("SkipSimplifiedLayerNormalization", MS_DOMAIN): {1, 2},
}


def _angle_nodes(graph: ir.Graph) -> set[ir.Node]:
    """Cos/Sin and the float nodes upstream of them (positions times inverse frequencies)."""
    kept: set[ir.Node] = set()
    stack = [node for node in graph if node.op_type in _ANGLE_OPS and node.domain == ""]
    while stack:
        node = stack.pop()
        if node in kept or not any(out.dtype == FLOAT for out in node.outputs):
            continue
        kept.add(node)
        stack.extend(value.producer() for value in node.inputs if value is not None and value.producer() is not None)
    return kept


def _takes_bf16(node: ir.Node, opsets: dict[str, int]) -> bool:
    """Whether the op's schema types every fp32 input and output of ``node`` (statistics outputs aside) with bf16 too."""
    formals = _formals(node, opsets)
    if formals is None:
        return False
    inputs, outputs, allowed = formals
    statistics = _STATISTICS.get((node.op_type, node.domain or ""), set())
    for params, values, skip in ((inputs, node.inputs, set()), (outputs, node.outputs, statistics)):
        for index, value in enumerate(values):
            if value is None or value.dtype != FLOAT or index in skip or not params:
                continue
            _, type_param, _ = params[min(index, len(params) - 1)]
            if "tensor(bfloat16)" not in allowed.get(type_param, {type_param}):  # a formal may name its one type
                return False
    return True


def _bf16(tensor: ir.TensorProtocol) -> ir.LazyTensor:
    """``tensor`` rounded to bfloat16 (to nearest even), computed when read."""
    return ir.LazyTensor(lambda: ir.tensor(tensor.numpy().astype(ml_dtypes.bfloat16)), dtype=BF16, shape=tensor.shape)


def _fill_missing_types(model: ir.Model) -> None:
    """Element types for the values that declare none, from ONNX's type inference (contrib ops' outputs
    carry theirs from fusion): which values are fp32 decides what is converted."""
    graph = model.graph
    untyped = {value.name: value for node in graph for value in node.outputs if value.dtype is None and value.name}
    if not untyped:
        return
    inferred = onnx.shape_inference.infer_shapes(ir.to_proto(model), strict_mode=False)
    for info in inferred.graph.value_info:
        value = untyped.get(info.name)
        if value is not None and info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            value.dtype = ir.DataType(info.type.tensor_type.elem_type)


def convert(model: ir.Model) -> dict[str, int]:
    """Turn ``model`` (fp32) into bf16 in place; returns counts of what was converted and kept."""
    _fill_missing_types(model)
    graph = model.graph
    opsets = dict(model.opset_imports)
    kept = _angle_nodes(graph) | {node for node in graph if not _takes_bf16(node, opsets) and _has_float(node)}
    converted = 0
    for node in graph:
        if node in kept:
            continue
        statistics = _STATISTICS.get((node.op_type, node.domain or ""), set())
        for index, out in enumerate(node.outputs):
            if out.dtype == FLOAT and index not in statistics:
                out.type = ir.TensorType(BF16)
        if node.op_type == "Cast" and node.attributes.get_int("to") == FLOAT.value:
            node.attributes["to"] = ir.AttrInt64("to", BF16.value)
        attr = node.attributes.get("value")  # Constant, ConstantOfShape
        if attr is not None and attr.type == ir.AttributeType.TENSOR and attr.value.dtype == FLOAT:
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(attr.value.numpy().astype(ml_dtypes.bfloat16)))
        converted += 1
    casts: dict[tuple[int, int], ir.Value] = {}
    for node in list(graph):
        wanted = FLOAT if node in kept else BF16
        for index, value in enumerate(node.inputs):
            if value is None or value.dtype not in (FLOAT, BF16) or value.dtype == wanted:
                continue
            node.replace_input_with(index, _as(graph, value, wanted, node, casts))
    for index, out in enumerate(list(graph.outputs)):
        if out.dtype == BF16:
            cast = ir.node("Cast", [out], attributes={"to": FLOAT.value}, name=f"{out.name}_to_fp32")
            graph.append(cast)
            name, out.name = out.name, f"{out.name}_bf16"
            cast.outputs[0].name, cast.outputs[0].type, cast.outputs[0].shape = name, ir.TensorType(FLOAT), out.shape
            graph.outputs[index] = cast.outputs[0]
    for name in [name for name, value in graph.initializers.items() if not value.uses() and not value.is_graph_output()]:
        graph.initializers.pop(name)
    return {"converted": converted, "kept fp32": len(kept), "casts": len(casts)}


def _has_float(node: ir.Node) -> bool:
    return any(v is not None and v.dtype == FLOAT for v in (*node.inputs, *node.outputs))


def _as(graph: ir.Graph, value: ir.Value, dtype: ir.DataType, consumer: ir.Node, casts: dict) -> ir.Value:
    """``value`` as ``dtype``: a bf16 copy of an fp32 initializer, else a Cast (one per value and type)."""
    key = (id(value), dtype.value)
    if key in casts:
        return casts[key]
    if value.is_initializer() and value.const_value is not None and dtype == BF16:
        casts[key] = new_initializer(graph, f"{value.name}_bf16", _bf16(value.const_value))
        return casts[key]
    cast = ir.node("Cast", [value], attributes={"to": dtype.value}, name=f"{value.name}_to_{'bf16' if dtype == BF16 else 'fp32'}")
    cast.outputs[0].type, cast.outputs[0].shape = ir.TensorType(dtype), value.shape
    graph.insert_before(consumer, cast)
    casts[key] = cast.outputs[0]
    return cast.outputs[0]


def emulated(model: ir.Model) -> ir.Model:
    """The bf16 ``model``, in place, made to run on the CPU: fp32 compute, every bf16 value rounded to bf16 where stored."""
    graph = model.graph
    for value in graph.initializers.values():
        if value.dtype == BF16 and value.const_value is not None:
            tensor = value.const_value
            value.const_value = ir.LazyTensor(lambda tensor=tensor: ir.tensor(tensor.numpy().astype(np.float32)), dtype=FLOAT,
                                              shape=tensor.shape, name=value.name)
            value.type = ir.TensorType(FLOAT)
    for node in list(graph):
        if node.op_type == "Cast" and node.attributes.get_int("to") == BF16.value:
            node.attributes["to"] = ir.AttrInt64("to", FLOAT.value)
        attr = node.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR and attr.value.dtype == BF16:
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(attr.value.numpy().astype(np.float32)))
        for out in node.outputs:
            if out.dtype != BF16:
                continue
            out.type = ir.TensorType(FLOAT)
            users = list(out.uses())
            down = ir.node("Cast", [out], attributes={"to": BF16.value})
            up = ir.node("Cast", [down.outputs[0]], attributes={"to": FLOAT.value})
            down.outputs[0].type, up.outputs[0].type = ir.TensorType(BF16), ir.TensorType(FLOAT)
            graph.insert_after(node, [down, up])
            for user, index in users:
                user.replace_input_with(index, up.outputs[0])
            if out.is_graph_output():
                outputs = list(graph.outputs)
                graph.outputs[outputs.index(out)] = up.outputs[0]
                name, out.name = out.name, f"{out.name}_unrounded"
                up.outputs[0].name = name
    return model


def structural_problems(path) -> list[str]:
    """Where the model at ``path`` breaks a schema's types: each node's inputs and outputs against its
    op's type constraints (ONNX's schemas for the standard ops, ONNX Runtime's for its own, the
    default-domain ones such as SimplifiedLayerNormalization included), one type per type parameter."""
    model = ir.load(path)
    opsets = dict(model.opset_imports)
    problems = []
    for node in model.graph:
        formals = _formals(node, opsets)
        if formals is None:
            problems.append(f"{node.name or node.op_type}: no schema for {node.op_type} ({node.domain or 'ai.onnx'})")
            continue
        inputs, outputs, allowed = formals
        bound: dict[str, set[str]] = {}
        for params, values in ((inputs, node.inputs), (outputs, node.outputs)):
            for index, value in enumerate(values):
                if not params or value is None or value.dtype not in _TYPE_STRINGS:
                    continue
                name, type_param, variadic = params[min(index, len(params) - 1)]
                if index >= len(params) and not variadic:
                    continue
                type_str = _TYPE_STRINGS[value.dtype]
                if type_param in allowed:
                    bound.setdefault(type_param, set()).add(type_str)
                if type_str not in allowed.get(type_param, {type_param}):
                    problems.append(f"{node.name or node.op_type}: {name} is {type_str}, which {node.op_type} does not take")
        problems += [f"{node.name or node.op_type}: {param} bound to {', '.join(sorted(types))}"
                     for param, types in bound.items() if len(types) > 1]
    return problems


def _formals(node: ir.Node, opsets: dict[str, int]):
    """([(name, type param, variadic)] for inputs and outputs, {type param: allowed types}) of the node's op."""
    domain = node.domain or ""
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
        type_str, variadic = (lambda f: f.type_str), onnx.defs.OpSchema.FormalParameterOption.Variadic
    except onnx.defs.SchemaError:
        schema = ort_schema(node.op_type, domain, opsets.get(domain, 1))
        if schema is None:
            return None
        type_str, variadic = (lambda f: f.typeStr), type(schema.inputs[0].option).Variadic if schema.inputs else None
    params = [[(f.name, type_str(f), f.option == variadic) for f in formals] for formals in (schema.inputs, schema.outputs)]
    return params[0], params[1], {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}


_TYPE_STRINGS = {
    ir.DataType.FLOAT: "tensor(float)", ir.DataType.BFLOAT16: "tensor(bfloat16)", ir.DataType.FLOAT16: "tensor(float16)",
    ir.DataType.DOUBLE: "tensor(double)", ir.DataType.INT64: "tensor(int64)", ir.DataType.INT32: "tensor(int32)",
    ir.DataType.BOOL: "tensor(bool)", ir.DataType.UINT8: "tensor(uint8)", ir.DataType.INT8: "tensor(int8)",
}
