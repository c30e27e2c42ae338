"""Whole-graph passes around the fusion rules: prepare (fold, infer shapes, canonicalize) and clean up."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer
from onnxscript.rewriter.pattern import RewriteRuleSet
from onnxscript.rewriter.rules import common as common_rules

from .rules.decoder_forms import reshape_ranks
from .values import MS_DOMAIN, constant_array

_COMMUTATIVE = {"Add", "Mul"}


def canonicalize_commutative(graph: ir.Graph) -> None:
    """Put the constant operand of Add/Mul second, so rules match ``Add(MatMul(x, W), bias)`` only.

    The legacy exporter writes ``Add(bias, MatMul)``, dynamo ``Add(MatMul, bias)``;
    one canonical order keeps every rule free of commuted variants.
    """
    for node in graph:
        if node.op_type in _COMMUTATIVE and node.domain == "" and len(node.inputs) == 2:
            first, second = node.inputs
            if first is not None and second is not None and first.const_value is not None and second.const_value is None:
                node.replace_input_with(0, second)
                node.replace_input_with(1, first)


def shapes_from_sources(graph: ir.Graph) -> int:
    """Shape(Gather(table, ids)) -> Concat(Shape(ids), [width]) for constant 2-D tables.

    Exports take the shape of the embedding lookup to size the position ids; that
    extra use of the lookup would keep it alive after EmbedLayerNormalization
    replaces it. Returns how many Shape nodes were redirected.
    """
    changed = 0
    for node in list(graph):
        if node.op_type != "Shape" or node.domain != "" or node.attributes:
            continue
        lookup = node.inputs[0].producer()
        if lookup is None or lookup.op_type != "Gather" or lookup.attributes.get_int("axis", 0) != 0:
            continue
        table = lookup.inputs[0].const_value
        if table is None or len(table.shape) != 2:
            continue
        width = ir.tensor(np.array([table.shape[1]], dtype=np.int64), name=f"{node.name}_width")
        ids_shape = ir.node("Shape", [lookup.inputs[1]], name=f"{node.name}_of_ids")
        width_value = ir.node("Constant", [], attributes={"value": width}, name=f"{node.name}_width")
        joined = ir.node("Concat", [ids_shape.outputs[0], width_value.outputs[0]], attributes={"axis": 0}, name=f"{node.name}_joined")
        graph.insert_before(node, [ids_shape, width_value, joined])
        node.outputs[0].replace_all_uses_with(joined.outputs[0])
        changed += 1
    return changed


def _exact_simplifications(opset: int) -> list:
    """onnxscript's structural clean-ups, without its arithmetic no-op rules.

    ``onnxscript.optimizer.optimize()`` would run its default rules, whose "Add(x, 0) -> x"
    matches constants with abs_tol 1e-8 and so deletes LayerNorm's epsilon (1e-12) from
    tf2onnx graphs; everything kept here is exact. Slice pairs -> Split is kept from
    opset 18 only: it writes ``Split(num_outputs=2)``, an attribute older opsets reject.
    """
    rules = [
        common_rules.cast_cast_rule,
        common_rules.no_op_cast_rule,
        common_rules.no_op_expand_rule,
        common_rules.no_op_transpose_rule,
        common_rules.reshape_reshape_rule,
        common_rules.slice_split_rule,
        common_rules.squeeze_reshape_1d_rule,
        common_rules.transpose_transpose_rule,
        common_rules.unsqueeze_unsqueeze_rule,
        common_rules.collapse_slice_rule,
        common_rules.collapse_slice2_rule,
        common_rules.materialize_reshape_shape_rule,
        common_rules.cast_constant_of_shape_rule,
        common_rules.cast_constant_of_shape_without_value_rule,
        common_rules.dropout_inference_rule,
        common_rules.dropout_zero_rule,
    ]
    return [rule for rule in rules if opset >= 18 or rule is not common_rules.slice_split_rule]


def reshape_constant_weights(graph: ir.Graph) -> int:
    """Reshape(initializer, constant shape) -> a reshaped initializer, whatever its size.

    Constant folding skips tensors over its size limit, so at bert-base size Keras'
    output-projection weight stays behind a Reshape and no rule sees a constant
    weight. A reshape only relabels the same bytes, so folding it costs nothing.
    """
    folded = 0
    for node in list(graph):
        if node.op_type != "Reshape" or node.domain != "" or node.attributes.get_int("allowzero", 0):
            continue
        data, shape = (constant_array(v) for v in node.inputs[:2])
        if data is None or shape is None or node.inputs[0].const_value is None or 0 in shape.tolist():
            continue
        try:
            reshaped = data.reshape(shape.astype(np.int64).tolist())
        except ValueError:
            continue
        value = ir.Value(name=f"{node.outputs[0].name}_folded", const_value=ir.tensor(reshaped))
        value.shape = ir.Shape(reshaped.shape)
        value.dtype = node.inputs[0].dtype
        graph.register_initializer(value)
        node.outputs[0].replace_all_uses_with(value, replace_graph_outputs=True)
        folded += 1
    return folded


def prepare(model: ir.Model) -> None:
    """Fold constants and shape computations, infer shapes, canonicalize operand order.

    Legacy (TorchScript) exports carry Constant nodes and no intermediate shapes;
    after this they look like dynamo exports to the rules.
    """
    simplifications = _exact_simplifications(model.opset_imports.get("", 1))
    for _ in range(2):
        reshape_ranks(model.graph)  # before opset 13, shape inference leaves computed Reshapes rankless
        onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True)
        reshape_constant_weights(model.graph)
        RewriteRuleSet(simplifications).apply_to_model(model)
        onnxscript.optimizer.remove_unused_nodes(model)
    if shapes_from_sources(model.graph):
        common_passes.RemoveUnusedNodesPass()(model)
    canonicalize_commutative(model.graph)


def cleanup(model: ir.Model) -> None:
    """Drop what fusion left dead (mask subgraphs, unpacked Q/K/V weights), merge duplicate casts."""
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.CommonSubexpressionEliminationPass()(model)
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.RemoveUnusedOpsetsPass()(model)
    if any(node.domain == MS_DOMAIN for node in model.graph):
        model.opset_imports[MS_DOMAIN] = 1
    common_passes.TopologicalSortPass()(model)


def inputs_to_int32(model: ir.Model) -> list[str]:
    """``--input_int32``: int64 graph inputs become int32, removing the casts contrib ops needed.

    Consumers that still need int64 get one Cast back; returns the converted input names.
    """
    converted = []
    graph = model.graph
    for value in graph.inputs:
        if value.dtype != ir.DataType.INT64:
            continue
        uses = list(value.uses())
        int32_casts = [
            node
            for node, _ in uses
            if node.op_type == "Cast" and node.domain == "" and node.attributes.get_int("to") == ir.DataType.INT32
        ]
        if not int32_casts:
            continue
        value.dtype = ir.DataType.INT32
        # Readers other than the casts, taken before the casts' readers are redirected to the input;
        # Shape() reads no data, so it takes the int32 input as it is.
        others = [(node, index) for node, index in uses if node not in int32_casts and node.op_type != "Shape"]
        for cast in int32_casts:
            cast.outputs[0].replace_all_uses_with(value)
        if others:
            back = ir.node("Cast", [value], attributes={"to": ir.DataType.INT64}, name=f"{value.name}_as_int64")
            back.outputs[0].name = f"{value.name}_int64"
            back.outputs[0].dtype = ir.DataType.INT64
            graph.append(back)  # TopologicalSortPass below puts it in place
            for node, index in others:
                node.replace_input_with(index, back.outputs[0])
        converted.append(value.name)
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.TopologicalSortPass()(model)
    return converted
