"""Raise a model's default-domain opset to 17 when every op it holds means the same there.

Below opset 17 ONNX has no LayerNormalization. A LayerNorm that fusion found and no larger
fusion took must then be written back in the old opset's ops, unless the model's opset can
be raised. Raising is exact only when no node changes meaning: most ops changed between
opsets 11 and 17 only by accepting more element types (bfloat16 at 13, the integer types of
Add/Mul at 14) or by gaining attributes whose defaults keep the old behaviour (Reshape's
``allowzero``, Shape's ``start``/``end``). Those are listed in :data:`_SAME_MEANING_AT_17`.
Four ops moved an attribute into an input at 13 (Squeeze, Unsqueeze, Split's ``split``,
ReduceSum's ``axes``): they are rewritten to the new spelling. Softmax and its kin changed
how they read ``axis`` at 13; over the last axis both readings agree. Any other op whose
schema changed (Resize, Dropout, control flow, ...) keeps the model at its opset.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

TARGET_OPSET = 17

# Ops whose versions between opset 11 and 17 only add element types or attributes whose
# defaults keep the earlier behaviour (checked against onnx's operator changelog).
_SAME_MEANING_AT_17 = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "Cast", "Ceil", "Clip", "Concat", "Constant", "ConstantOfShape",
    "CumSum", "Div", "Einsum", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements",
    "GatherND", "Gemm", "Greater", "GreaterOrEqual", "Identity", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "MatMul", "Max", "Mean", "Min", "Mod", "Mul", "Neg", "Not", "Or", "Pad", "Pow", "PRelu", "Range",
    "Reciprocal", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "Relu", "Reshape",
    "ScatterElements", "ScatterND", "Shape", "Sigmoid", "Sign", "Size", "Slice", "Sqrt", "Sub", "Sum", "Tanh",
    "Tile", "Transpose", "Where", "Xor",
})
# Ops onnx has no schema for below 17 (or at all) that ONNX Runtime registers in the default
# domain at every opset, with one meaning: its LayerNormalization before 17 is onnx's from 17.
_ORT_DEFAULT_DOMAIN_OPS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization"})
_LAST_AXIS_ONLY = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
# op -> the attribute that became its second input at opset 13.
_ATTRIBUTE_TO_INPUT = {"Squeeze": "axes", "Unsqueeze": "axes", "ReduceSum": "axes", "Split": "split"}


def _unchanged_since(op_type: str, opset: int) -> bool:
    """Whether onnx's schema of ``op_type`` at opset 17 is the one the model's opset already has."""
    try:
        return onnx.defs.get_schema(op_type, TARGET_OPSET, "").since_version <= opset
    except onnx.defs.SchemaError:
        return False


def _softmax_over_last_axis(node: ir.Node, opset: int) -> bool:
    """Before 13 a Softmax flattens from ``axis`` on (default 1); from 13 it reads one axis (default -1).

    Both agree when ``axis`` names the last axis of a tensor of known rank.
    """
    rank = node.inputs[0].shape.rank() if node.inputs[0] is not None and node.inputs[0].shape is not None else None
    axis = node.attributes.get_int("axis", 1 if opset < 13 else -1)
    return axis == -1 or (rank is not None and axis == rank - 1)


def _raisable(node: ir.Node, opset: int) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return True  # contrib and custom domains have their own opset
    if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
        return False
    if node.op_type in _SAME_MEANING_AT_17 or node.op_type in _ORT_DEFAULT_DOMAIN_OPS or _unchanged_since(node.op_type, opset):
        return True
    if node.op_type in _LAST_AXIS_ONLY:
        return _softmax_over_last_axis(node, opset)
    return node.op_type in _ATTRIBUTE_TO_INPUT


def _attribute_to_input(graph: ir.Graph, node: ir.Node) -> None:
    """Squeeze(x, axes=[..]) -> Squeeze(x, [..]) and the like; the new input is an initializer."""
    name = _ATTRIBUTE_TO_INPUT[node.op_type]
    attr = node.attributes.pop(name, None)
    if attr is None or len(node.inputs) > 1:
        return  # no attribute: the op's default (all axes, equal parts) reads the same at 13
    tensor = ir.tensor(np.array(attr.as_ints(), dtype=np.int64), name=f"{node.name or node.op_type}_{name}")
    value = ir.Value(name=tensor.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(ir.DataType.INT64), const_value=tensor)
    graph.register_initializer(value)
    node.resize_inputs(2)
    node.replace_input_with(1, value)


def raise_to_layer_norm_opset(model: ir.Model) -> bool:
    """Raise the default opset to 17 if every node means the same there; True if the model is now at 17+.

    A model with functions is left alone (their bodies would need the same review).
    """
    opset = model.opset_imports.get("", 1)
    if opset >= TARGET_OPSET:
        return True
    if model.functions or not all(_raisable(node, opset) for node in model.graph):
        return False
    if opset < 13:
        for node in list(model.graph):
            if node.domain in ("", "ai.onnx") and node.op_type in _ATTRIBUTE_TO_INPUT:
                _attribute_to_input(model.graph, node)
    model.opset_imports[""] = TARGET_OPSET
    return True
