"""Whole-graph passes around the fusion rules: prepare (fold, infer shapes, canonicalize) and clean up."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer
from onnxscript.rewriter.pattern import RewriteRuleSet
from onnxscript.rewriter.rules import common as common_rules

from ..errors import TfoptError
from .rules.decoder_forms import reshape_ranks
from .opset_raise import opset_needed, raise_opset
from .rules.normalization import LAYER_NORM_OPSET, expand_new_layer_norms, mark_input_layer_norms, new_layer_norms
from .shape_facts import dims_from_targets, unify_dims
from .values import MS_DOMAIN, constant_array

_COMMUTATIVE = {"Add", "Mul"}


def normalize_opset_imports(model: ir.Model) -> None:
    """Fold an ``ai.onnx`` opset import into the default domain ``""``.

    ``ai.onnx`` is a legal spelling of the default domain and several graph builders write
    it; onnx-ir already files the nodes under ``""``, but the import stayed ``ai.onnx``, so
    the written model had no usable default opset and ONNX Runtime read every node at
    opset 1 ("Unsqueeze has input size 2 not in range [1, 1]").
    """
    for owner in (model, *model.functions.values()):
        imports = owner.opset_imports
        if "ai.onnx" in imports:
            version = imports.pop("ai.onnx")
            imports[""] = max(version, imports.get("", version))
    if "" not in model.opset_imports and any(node.domain == "" for node in model.graph):
        raise TfoptError("the model imports no version of the default ONNX domain; its operator versions are unknown")


def _is_unknown_dim(dim, allow_zero: bool) -> bool:
    if isinstance(dim, int):
        return dim < 0 or (dim == 0 and not allow_zero)
    return dim.value is None or str(dim.value).strip() in ("", "?")


def name_unknown_dims(graph: ir.Graph) -> int:
    """Dims written as -1, 0, "" or "?" (or not at all) become unknown; returns how many changed.

    On graph inputs each gets a symbol of its own (``input_ids_dim0``): as a number, -1 was
    folded into ``Shape(input_ids) = [-1, -1]`` (an empty position Range, an invalid Expand);
    as "?" every such dim would be the same symbol, and in onnx-ir two anonymous dims compare
    equal. Elsewhere (outputs, stored value_info) a bad number is cleared for shape
    inference to fill in: a declared number would win over the inferred dim.
    """
    changed = 0
    inputs = {id(value) for value in graph.inputs}
    values = [*graph.inputs, *graph.outputs, *(out for node in graph for out in node.outputs)]
    for value in values:
        shape = value.shape
        if shape is None or value.const_value is not None:
            continue
        is_input = id(value) in inputs
        dims = list(shape.dims)
        for axis, dim in enumerate(dims):
            if is_input and _is_unknown_dim(dim, allow_zero=False):
                dims[axis] = ir.SymbolicDim(f"{value.name}_dim{axis}")
            elif not is_input and isinstance(dim, int) and _is_unknown_dim(dim, allow_zero=not value.is_graph_output()):
                dims[axis] = ir.SymbolicDim(None)
            else:
                continue
            changed += 1
        if dims != list(shape.dims):
            value.shape = ir.Shape(dims)
    return changed


# Ops ONNX Runtime runs at opsets where onnx has no schema (so no shape inference): output 0 has input 0's shape.
_SHAPE_KEEPING_WITHOUT_SCHEMA = {"LayerNormalization", "SimplifiedLayerNormalization"}


def shape_ops_without_schema(graph: ir.Graph) -> int:
    """Give a LayerNormalization below opset 17 (an ONNX Runtime op there) the shape and type of its input.

    onnx's shape inference knows no such node, so everything after it was left without
    shapes, and no rule that needs a rank could match downstream (ONNX Runtime's
    opset-11 GPT-2 test graphs). Returns how many outputs were given one.
    """
    given = 0
    for node in graph:
        if node.op_type not in _SHAPE_KEEPING_WITHOUT_SCHEMA or node.domain != "" or not node.inputs or node.inputs[0] is None:
            continue
        source, out = node.inputs[0], node.outputs[0]
        if out.shape is None and source.shape is not None:
            out.shape = source.shape
            given += 1
        if out.dtype is None and source.dtype is not None:
            out.dtype = source.dtype
    return given


def _is_embedding_lookup(node: ir.Node) -> bool | None:
    """``should_fold`` for constant folding: keep Gather(table, constant ids) as a lookup.

    With static input shapes the position (and segment) ids are constants, and folding
    their lookup leaves a constant [1, S, H] addend that EmbedLayerNormalization cannot take.
    A single index (a row picked out of a packed weight) still folds: rules want that row
    as a constant.
    """
    if node.op_type == "Gather" and node.domain == "" and node.attributes.get_int("axis", 0) == 0:
        table = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
        ids = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if table is not None and len(table.shape) == 2 and table.dtype.is_floating_point() and ids is not None and ids.size > 1:
            return False
    return None


def merge_repeated_centering(graph: ir.Graph) -> int:
    """Identical ReduceMean / Sub(x, mean) nodes -> one; returns how many were merged.

    Some exporters compute LayerNorm's ``x - mean`` twice (once for the variance, once for
    the numerator); one node lets the LayerNorm rules see one centred tensor.
    """
    merged = 0
    for op_type in ("ReduceMean", "Sub"):
        first: dict[tuple, ir.Node] = {}
        for node in list(graph):
            if node.op_type != op_type or node.domain != "" or len(node.outputs) != 1:
                continue
            if op_type == "Sub" and (node.inputs[1] is None or node.inputs[1].producer() is None or node.inputs[1].producer().op_type != "ReduceMean"):
                continue
            key = (
                tuple(_value_key(v) for v in node.inputs),
                tuple(sorted((name, repr(attr.value)) for name, attr in node.attributes.items())),
            )
            if key not in first:
                first[key] = node
                continue
            node.outputs[0].replace_all_uses_with(first[key].outputs[0], replace_graph_outputs=False)
            merged += 1
    return merged


def _value_key(value: ir.Value | None):
    """Identity of an operand; equal constants (two copies of the same axes) count as one."""
    array = constant_array(value)
    if array is not None:
        return ("const", array.dtype.str, array.shape, array.tobytes())
    return ("value", id(value))


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


def static_shape_slices(graph: ir.Graph) -> int:
    """Slice(Shape(x), starts, ends) whose picked dims are all known integers -> a constant.

    TorchScript's scaled_dot_product_attention computes its scale from ``Shape(q)[-1:]`` (the
    head size), which constant folding leaves alone because other dims of ``q`` are symbolic;
    once shapes are inferred the head size is known, the scale folds to a constant, and the
    attention rules (which want a constant scale) match. Returns how many slices were replaced.
    """
    changed = 0
    for node in list(graph):
        if node.op_type != "Slice" or node.domain != "" or len(node.inputs) < 3 or len(node.inputs) > 4:
            continue  # with steps (a 5th input) or axes other than 0 it is not worth the cases
        shape_node = node.inputs[0].producer() if node.inputs[0] is not None else None
        if shape_node is None or shape_node.op_type != "Shape" or shape_node.domain != "" or shape_node.attributes:
            continue
        dims = shape_node.inputs[0].shape
        bounds = [constant_array(value) for value in node.inputs[1:3]]
        axes = constant_array(node.inputs[3]) if len(node.inputs) == 4 and node.inputs[3] is not None else np.array([0])
        if dims is None or any(b is None or b.size != 1 for b in bounds) or axes is None or axes.tolist() not in ([0], [-1]):
            continue
        picked = list(dims)[slice(int(bounds[0].item()), int(bounds[1].item()))]
        if not picked or not all(isinstance(dim, int) for dim in picked):
            continue
        folded = ir.node("Constant", [], attributes={"value": ir.tensor(np.array(picked, dtype=np.int64), name=f"{node.name}_folded")},
                         name=f"{node.name}_folded")
        graph.insert_before(node, [folded])
        node.outputs[0].replace_all_uses_with(folded.outputs[0])
        changed += 1
    return changed


def _is_lookup(value: ir.Value | None) -> bool:
    """``value`` is Gather(constant 2-D table, ids) on axis 0: an embedding lookup."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Gather" or node.domain != "" or node.attributes.get_int("axis", 0) != 0:
        return False
    table = node.inputs[0].const_value
    return table is not None and len(table.shape) == 2


def shapes_through_picks(graph: ir.Graph) -> int:
    """Shape(Gather(lookup, i, axis=k)) (i a constant scalar) -> the lookup's shape without axis k.

    BART's legacy export sizes its position ids from ``inputs_embeds[:, :, -1]``, a second
    reader of the word lookup that kept EmbedLayerNormalization from replacing it. Picking one
    index drops the axis and keeps every other dim; the index must be in range of a known dim
    (as the Gather required). The new ``Shape(lookup)`` is then redirected to the ids by
    :func:`shapes_from_sources`. Returns how many Shape nodes were redirected.
    """
    changed = 0
    for node in list(graph):
        if node.op_type != "Shape" or node.domain != "" or node.attributes:
            continue
        pick = node.inputs[0].producer()
        if pick is None or pick.op_type != "Gather" or pick.domain != "" or not _is_lookup(pick.inputs[0]):
            continue
        source = pick.inputs[0]
        index = constant_array(pick.inputs[1])
        rank = source.shape.rank() if source.shape is not None else None
        if index is None or index.ndim != 0 or rank is None:
            continue
        axis = pick.attributes.get_int("axis", 0)
        axis = axis + rank if axis < 0 else axis
        size = source.shape[axis] if 0 <= axis < rank else None
        if not isinstance(size, int) or not -size <= int(index) < size:
            continue

        def ints(values, suffix):
            return ir.node("Constant", [], attributes={"value": ir.tensor(np.array(values, np.int64), name=f"{node.name}_{suffix}")})

        whole = ir.node("Shape", [source], name=f"{node.name}_of_source")
        nodes, parts = [whole], []
        for start, end in ((0, axis), (axis + 1, rank)):
            if start < end:
                bounds = [ints([start], f"start{start}"), ints([end], f"end{end}")]
                part = ir.node("Slice", [whole.outputs[0], *(b.outputs[0] for b in bounds)], name=f"{node.name}_dims{start}")
                nodes += [*bounds, part]
                parts.append(part.outputs[0])
        joined = ir.node("Concat", parts, attributes={"axis": 0}, name=f"{node.name}_joined")
        graph.insert_before(node, [*nodes, joined])
        node.outputs[0].replace_all_uses_with(joined.outputs[0])
        changed += 1
    return changed


def _exact_simplifications(opset: int) -> list:
    """onnxscript's structural clean-ups, without its arithmetic no-op rules.

    ``onnxscript.optimizer.optimize()`` would run its default rules, whose "Add(x, 0) -> x"
    matches constants with abs_tol 1e-8 and so deletes LayerNorm's epsilon (1e-12) from
    tf2onnx graphs; everything kept here is exact. Slice pairs -> Split is kept from
    opset 18 only: it writes ``Split(num_outputs=2)``, an attribute older opsets reject;
    a Reshape target made constant from a known output shape from opset 14 only: it writes
    ``allowzero=1``, which Reshape has from opset 14.
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
    if opset < 14:
        rules.remove(common_rules.materialize_reshape_shape_rule)
    return [rule for rule in rules if opset >= 18 or rule is not common_rules.slice_split_rule]


def _cannot_widen(factor: np.ndarray, other: ir.Value) -> bool:
    """A constant of only 1-dims, broadcast against ``other``, leaves other's shape as it is."""
    if factor.ndim == 0:
        return True
    rank = other.shape.rank() if other.shape is not None else None
    return rank is not None and factor.ndim <= rank and all(d == 1 for d in factor.shape)


def drop_unit_factors(graph: ir.Graph) -> int:
    """``x * 1`` and ``x / 1`` (an exact 1 constant of no wider shape or other type) -> x; returns how many.

    BART's scaled word embedding multiplies the lookup by ``embed_scale`` = 1.0, which the
    legacy exporter leaves as ``Mul(Gather(table, ids), 1.0)``: the Mul hid the lookup from
    EmbedLayerNormalization. Multiplying or dividing by exactly one gives x back bit for bit
    (NaN, infinities and -0 included). Only a constant that cannot broadcast x wider (a scalar,
    or all-1 dims no more than x's rank) and of x's type is dropped; a graph output keeps its node.
    """
    dropped = 0
    for node in list(graph):
        if node.op_type not in ("Mul", "Div") or node.domain != "" or len(node.inputs) != 2 or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        if out.is_graph_output():
            continue
        positions = (1, 0) if node.op_type == "Mul" else (1,)
        for index in positions:
            factor, other = node.inputs[index], node.inputs[1 - index]
            array = constant_array(factor)
            if other is None or array is None or array.size != 1 or not np.all(array == 1):
                continue
            if factor.dtype is None or factor.dtype != other.dtype or not _cannot_widen(array, other):
                continue
            out.replace_all_uses_with(other)
            dropped += 1
            break
    return dropped


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
    """Normalize what graph builders spell differently, fold constants and shape computations,
    infer shapes, give equal dims one symbol and Reshape/Expand outputs the dims their computed
    targets spell out (:mod:`shape_facts`), canonicalize operand order.

    Legacy (TorchScript) exports carry Constant nodes and no intermediate shapes;
    after this they look like dynamo exports to the rules.
    """
    normalize_opset_imports(model)
    mark_input_layer_norms(model.graph)
    name_unknown_dims(model.graph)
    simplifications = _exact_simplifications(model.opset_imports.get("", 1))
    shape_ops_without_schema(model.graph)
    for step in range(3):  # the last round only infers: the rules' new values get shapes too
        reshape_ranks(model.graph)  # before opset 13, shape inference leaves computed Reshapes rankless
        dims_from_targets(model.graph)  # computed targets whose entries say the dims (TorchScript's views)
        onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True, should_fold=_is_embedding_lookup)
        shape_ops_without_schema(model.graph)
        if step == 2:
            break
        reshape_constant_weights(model.graph)
        drop_unit_factors(model.graph)
        RewriteRuleSet(simplifications).apply_to_model(model)
        onnxscript.optimizer.remove_unused_nodes(model)
    for _ in range(2):  # equal sizes under different names (Dim.DYNAMIC exports) become one symbol;
        changed = unify_dims(model.graph)  # inference then fills in more dims, which may show more;
        changed += dims_from_targets(model.graph)  # one symbol may let a -1 entry's sizes cancel
        changed += static_shape_slices(model.graph)  # the dims known now may make a shape's slice constant
        if not changed:
            break
        onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True, should_fold=_is_embedding_lookup)
    if merge_repeated_centering(model.graph):
        onnxscript.optimizer.remove_unused_nodes(model)
    picked = shapes_through_picks(model.graph)  # before shapes_from_sources, which redirects the Shape(lookup) it writes
    if shapes_from_sources(model.graph) or picked:
        common_passes.RemoveUnusedNodesPass()(model)
    canonicalize_commutative(model.graph)


OPSET_RAISED = "opset raised"  # how a note about a raised opset starts: the user's runtime must have it


def cleanup(model: ir.Model) -> list[str]:
    """Drop what fusion left dead (mask subgraphs, unpacked Q/K/V weights), merge duplicate casts.

    Below opset 17 a LayerNormalization no fusion took needs opset 17: the opset is raised
    where every node means the same there (:mod:`opset_raise`), else the LayerNorm is written
    back in the ops the model's opset has. Returns notes for the user (the raise).
    """
    notes = []
    common_passes.RemoveUnusedNodesPass()(model)
    opset = model.opset_imports.get("", 1)
    left = len(new_layer_norms(model.graph)) if opset < LAYER_NORM_OPSET else 0
    if left and raise_opset(model, LAYER_NORM_OPSET):
        notes.append(f"{OPSET_RAISED} from {opset} to {LAYER_NORM_OPSET} for {left} LayerNormalization (every other op means the same there)")
    needed = opset_needed(model.graph)
    if needed > model.opset_imports.get("", 1):
        # The rules that write these ops run only where can_raise(model, needed) held.
        if not raise_opset(model, needed):
            raise TfoptError(f"internal error: the fused model needs opset {needed} and cannot be raised to it")
        notes.append(f"{OPSET_RAISED} from {opset} to {needed} for the standard Attention/RotaryEmbedding ops (every other op means the same there)")
    expand_new_layer_norms(model.graph, model.opset_imports.get("", 1))
    common_passes.CommonSubexpressionEliminationPass()(model)
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.RemoveUnusedOpsetsPass()(model)
    if any(node.domain == MS_DOMAIN for node in model.graph):
        model.opset_imports[MS_DOMAIN] = 1
    common_passes.TopologicalSortPass()(model)
    return notes


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
