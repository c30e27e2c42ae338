"""Fused ops rewritten into the forms ONNX Runtime's CPU provider runs fastest.

ONNX Runtime 1.32's CPU kernel for an fp32 ``SkipLayerNormalization`` is a scalar loop: on
[1, 128, 768] it takes ~200 us where ``Sum`` + ``LayerNormalization`` take ~40 us, and it is
slower at one row too (4.1 vs 1.8 us); measured on AMD Zen 4 (``scripts/benchmark_encoders.py``
times whole models both ways). With ``cpu_layer_norm`` (opt-in: the default op set is ONNX
Runtime's optimizer's) each fp32 SkipLayerNormalization becomes
``LayerNormalization(Sum(input + bias, skip))``: one fusion still (one read of the residual
per sub-layer), in ops with fast kernels.

Why ``Sum`` and not ``Add``: ONNX Runtime's session optimizer turns Add + LayerNormalization
back into SkipLayerNormalization (its SkipLayerNormFusion matches ``Add`` only), which is why
the raw export of a post-LN model such as BERT runs the slow kernel too.
``SkipSimplifiedLayerNormalization`` (RMSNorm) is left alone: its kernel is within ~30% of the
split form at 128 rows and faster at one row, the decode shape of the models that use it.
"""

from __future__ import annotations

import onnx_ir as ir

from .rules.normalization import LAYER_NORM_OPSET
from .values import MS_DOMAIN, take_over

SKIP_LAYER_NORM = "SkipLayerNormalization"
LOWERED_OP = "Sum"  # what counts a lowered SkipLayerNormalization: one Sum each


def skip_layer_norms_for_cpu(model: ir.Model) -> int:
    """Rewrite each fp32 SkipLayerNormalization as Add(bias) + Sum + LayerNormalization; returns how many.

    A node whose mean or inverse-std output is read (training graphs) is kept, and so is
    every one of a model whose default opset is below 17 (no LayerNormalization there).
    """
    if model.opset_imports.get("", 0) < LAYER_NORM_OPSET:
        return 0
    graph = model.graph
    lowered = 0
    for node in list(graph):
        if node.op_type != SKIP_LAYER_NORM or node.domain != MS_DOMAIN or node.inputs[0].dtype != ir.DataType.FLOAT:
            continue
        if any(len(out.uses()) or out.is_graph_output() for out in node.outputs[1:3]):
            continue
        _lower(graph, node)
        lowered += 1
    return lowered


def _lower(graph: ir.Graph, node: ir.Node) -> None:
    x, skip, gamma, beta, bias = [*node.inputs, None, None, None][:5]
    name = node.name or "skip_layer_norm"
    added = []
    if bias is not None:
        added.append(ir.node("Add", [x, bias], name=f"{name}_bias"))
        x = added[-1].outputs[0]
    total = ir.node(LOWERED_OP, [x, skip], name=f"{name}_residual")
    norm_inputs = [total.outputs[0], gamma] + ([beta] if beta is not None else [])
    epsilon = node.attributes.get_float("epsilon", 1e-12)
    norm = ir.node("LayerNormalization", norm_inputs, attributes={"axis": -1, "epsilon": epsilon}, name=f"{name}_norm")
    graph.insert_before(node, [*added, total, norm])
    output = node.outputs[0]
    for value in [*(a.outputs[0] for a in added), total.outputs[0]]:
        _typed_like(value, output)
    take_over(output, norm.outputs[0])
    if len(node.outputs) > 3:
        take_over(node.outputs[3], total.outputs[0])
    graph.remove(node, safe=True)


def _typed_like(value: ir.Value, like: ir.Value) -> None:
    if like.dtype is not None:
        value.dtype = like.dtype
    value.shape = like.shape
