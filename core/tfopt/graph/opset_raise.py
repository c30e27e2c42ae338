"""Raise a model's default-domain opset when every op it holds means the same at the new one.

Below opset 17 ONNX has no LayerNormalization; below 23 no standard Attention (with grouped
key/value heads) or RotaryEmbedding. A fusion that writes such an op needs the model's opset
raised, else it must not fire (or, for LayerNorm, is written back in the old opset's ops).
Raising is exact only when no node changes meaning: most ops changed between opsets 11 and
23 only by accepting more element types (bfloat16 at 13 and 22, the integer types of Add/Mul
at 14, float8/int4 at 19-23) or by gaining attributes whose defaults keep the old behaviour
(Reshape's ``allowzero``, Shape's ``start``/``end``, Cast's ``saturate``, which only float8
reads). Those are listed in :data:`_SAME_MEANING`. Some ops moved an attribute into an input
(Squeeze, Unsqueeze, Split's ``split`` and ReduceSum's ``axes`` at 13, the other reductions'
``axes`` at 18): they are rewritten to the new spelling, and a Split with neither gets the
``num_outputs`` opset 18 requires. Softmax and its kin changed how they read ``axis`` at 13;
over the last axis both readings agree. Any other op whose schema changed (Resize, Dropout,
control flow, ...) keeps the model at its opset.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

MAX_TARGET = 23  # the newest opset whose changes were reviewed for the tables below

# Ops whose versions between opset 11 and 23 only add element types or attributes whose
# defaults keep the earlier behaviour (checked against onnx's operator changelog).
_SAME_MEANING = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "Cast", "Ceil", "Clip", "Concat", "Constant", "ConstantOfShape",
    "Conv", "Cos", "CumSum", "Div", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather",
    "GatherElements", "GatherND", "Gemm", "GlobalAveragePool", "Greater", "GreaterOrEqual", "HardSigmoid",
    "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log", "MatMul", "Max", "Mean",
    "Min", "Mod", "Mul", "Neg", "Not", "Or", "Pad", "Pow", "PRelu", "Range", "Reciprocal", "Relu", "Reshape",
    "Round", "ScatterElements", "ScatterND", "Shape", "Sigmoid", "Sign", "Sin", "Size", "Slice", "Softplus",
    "Sqrt", "Sub", "Sum", "Tanh", "Tile", "Transpose", "Where", "Xor",
})
# Ops onnx has no schema for below 17 (or at all) that ONNX Runtime registers in the default
# domain at every opset, with one meaning: its LayerNormalization before 17 is onnx's from 17.
_ORT_DEFAULT_DOMAIN_OPS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization"})
_LAST_AXIS_ONLY = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
# op -> (the opset at which an attribute became its second input, that attribute).
_ATTRIBUTE_TO_INPUT = {
    "Squeeze": (13, "axes"), "Unsqueeze": (13, "axes"), "ReduceSum": (13, "axes"), "Split": (13, "split"),
    **{op: (18, "axes") for op in (
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSumSquare",
    )},
}
_SPLIT_COUNT_OPSET = 18  # a Split without sizes states its number of outputs from here on
# Default-domain ops fusion writes that need a newer opset than most exports import.
NEWER_OPS = {"Attention": 23, "RotaryEmbedding": 23}


def opset_needed(graph: ir.Graph) -> int:
    """The opset the fused ops of :data:`NEWER_OPS` in ``graph`` need (0 when it has none)."""
    return max((NEWER_OPS.get(node.op_type, 0) for node in graph if node.domain in ("", "ai.onnx")), default=0)


def _unchanged_since(op_type: str, opset: int, target: int) -> bool:
    """Whether onnx's schema of ``op_type`` at ``target`` is the one the model's opset already has."""
    try:
        return onnx.defs.get_schema(op_type, target, "").since_version <= opset
    except onnx.defs.SchemaError:
        return False


def _softmax_over_last_axis(node: ir.Node, opset: int) -> bool:
    """Before 13 a Softmax flattens from ``axis`` on (default 1); from 13 it reads one axis (default -1).

    Both agree when ``axis`` names the last axis of a tensor of known rank.
    """
    rank = node.inputs[0].shape.rank() if node.inputs[0] is not None and node.inputs[0].shape is not None else None
    axis = node.attributes.get_int("axis", 1 if opset < 13 else -1)
    return axis == -1 or (rank is not None and axis == rank - 1)


def _raisable(node: ir.Node, opset: int, target: int) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return True  # contrib and custom domains have their own opset
    if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
        return False
    if node.op_type in _ATTRIBUTE_TO_INPUT or NEWER_OPS.get(node.op_type, 0) == target:
        return True  # respelled by the raise / written by fusion for the target opset
    if node.op_type in _SAME_MEANING or node.op_type in _ORT_DEFAULT_DOMAIN_OPS or _unchanged_since(node.op_type, opset, target):
        return True
    if node.op_type in _LAST_AXIS_ONLY:
        return _softmax_over_last_axis(node, opset)
    return False


def _attribute_to_input(graph: ir.Graph, node: ir.Node, name: str) -> None:
    """Squeeze(x, axes=[..]) -> Squeeze(x, [..]) and the like; the new input is an initializer."""
    attr = node.attributes.pop(name, None)
    if attr is None or len(node.inputs) > 1:
        return  # no attribute: the op's default (all axes, equal parts) reads the same
    tensor = ir.tensor(np.array(attr.as_ints(), dtype=np.int64), name=f"{node.name or node.op_type}_{name}")
    value = ir.Value(name=tensor.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(ir.DataType.INT64), const_value=tensor)
    graph.register_initializer(value)
    node.resize_inputs(2)
    node.replace_input_with(1, value)


def can_raise(model: ir.Model, target: int) -> bool:
    """Whether :func:`raise_opset` would raise ``model`` to ``target`` (or it is there already)."""
    opset = model.opset_imports.get("", 1)
    if opset >= target:
        return True
    if target > MAX_TARGET or model.functions:  # function bodies would need the same review
        return False
    return all(_raisable(node, opset, target) for node in model.graph)


def raise_opset(model: ir.Model, target: int) -> bool:
    """Raise the default opset to ``target`` if every node means the same there; True if the
    model is now at ``target`` or above."""
    opset = model.opset_imports.get("", 1)
    if opset >= target:
        return True
    if not can_raise(model, target):
        return False
    for node in list(model.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in _ATTRIBUTE_TO_INPUT:
            continue
        since, name = _ATTRIBUTE_TO_INPUT[node.op_type]
        if opset < since <= target:
            _attribute_to_input(model.graph, node, name)
        if node.op_type == "Split" and opset < _SPLIT_COUNT_OPSET <= target and len(node.inputs) < 2:
            node.attributes["num_outputs"] = ir.AttrInt64("num_outputs", len(node.outputs))
    model.opset_imports[""] = target
    return True
