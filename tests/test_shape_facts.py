"""Equal dims under different names become one symbol, from what the graph computes (tfopt.graph.shape_facts)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from tfopt.graph.shape_facts import unify_dims


def _model(nodes, inputs, outputs, value_info=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, value_info=list(value_info))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))  # as prepare() leaves a graph


def _dims(value: ir.Value) -> list:
    return [d if isinstance(d, int) else d.value for d in value.shape]


def _info(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_a_matmul_contraction_and_a_broadcast_tie_symbols_of_different_inputs():
    # q: [b1, s1, 8] @ k^T: [b2, 8, s2] -> scores [?, s1, ?]; scores + mask [b3, 1, s3]
    model = _model(
        [
            helper.make_node("MatMul", ["q", "kt"], ["scores"]),
            helper.make_node("Add", ["scores", "mask"], ["masked"]),
            helper.make_node("MatMul", ["masked", "v"], ["out"]),
        ],
        [_info("q", ["b1", "s1", 8]), _info("kt", ["b2", 8, "s2"]), _info("mask", ["b3", 1, "s3"]), _info("v", ["b4", "s4", 8])],
        [_info("out", None)],
        [_info("scores", [None, "s1", None]), _info("masked", [None, None, None])],
    )
    assert unify_dims(model.graph)
    q, kt, mask, v = model.graph.inputs
    assert _dims(q) == ["b1", "s1", 8]
    assert _dims(kt) == ["b1", 8, "s2"]  # batch broadcast with q's
    assert _dims(mask) == ["b1", 1, "s2"]  # broadcast against the scores' keys axis
    assert _dims(v) == ["b1", "s2", 8]  # contracted with the masked scores' keys axis
    masked = model.graph.node(1).outputs[0]
    assert _dims(masked) == ["b1", "s1", "s2"]  # unknown dims filled from their class


def test_sums_of_lengths_that_meet_give_their_terms_one_symbol():
    # present_k = Concat(past_k [b, p1, 8], k [b, s, 8]); present_v = Concat(past_v [b, p2, 8], v)
    # scores = q @ present_k^T: [b, s, p1 + s]; out = scores @ present_v: contracts p1 + s with p2 + s
    model = _model(
        [
            helper.make_node("Concat", ["past_k", "k"], ["present_k"], axis=1),
            helper.make_node("Concat", ["past_v", "v"], ["present_v"], axis=1),
            helper.make_node("Transpose", ["present_k"], ["kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["q", "kt"], ["scores"]),
            helper.make_node("MatMul", ["scores", "present_v"], ["out"]),
        ],
        [
            _info("q", ["b", "s", 8]), _info("k", ["b", "s", 8]), _info("v", ["b", "s", 8]),
            _info("past_k", ["b", "p1", 8]), _info("past_v", ["b", "p2", 8]),
        ],
        [_info("out", None)],
        [_info("present_k", ["b", "p1 + s", 8]), _info("present_v", ["b", "s+p2", 8])],
    )
    unify_dims(model.graph)
    past_v = model.graph.inputs[4]
    assert _dims(past_v) == ["b", "p1", 8]
    present_v = model.graph.node(1).outputs[0]
    assert _dims(present_v) == ["b", "p1 + s", 8]


def test_a_one_that_broadcasts_ties_nothing_and_numbers_never_replace_an_input_symbol():
    model = _model(
        [helper.make_node("Add", ["x", "y"], ["z"]), helper.make_node("Add", ["z", "w"], ["u"])],
        [_info("x", ["a", 1]), _info("y", [1, "c"]), _info("w", [5, "d"])],
        [_info("u", None)],
    )
    unify_dims(model.graph)
    x, y, w = model.graph.inputs
    assert _dims(x) == ["a", 1] and _dims(y) == [1, "c"]  # a and c meet only 1s
    assert _dims(w) == [5, "c"]  # d meets c on the second axis; 5 meets a, and a stays a symbol
    assert _dims(x) == ["a", 1]


def test_contradicting_numbers_leave_the_class_alone():
    model = _model(
        [helper.make_node("Add", ["x", "y"], ["z"]), helper.make_node("Add", ["x", "w"], ["u"])],
        [_info("x", ["n"]), _info("y", [3]), _info("w", [4])],
        [_info("z", None), _info("u", None)],
    )
    unify_dims(model.graph)
    assert _dims(model.graph.inputs[0]) == ["n"]


# --- Reshape/Expand targets computed from sizes (tfopt.graph.shape_facts.dims_from_targets) -----------

def _int64(name, values):
    """A Constant node: a list is a 1-D tensor, a number a scalar."""
    dims, values = ([len(values)], values) if isinstance(values, list) else ([], [values])
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, dims, values))


def _size(prefix, source, axis):
    """Unsqueeze(Gather(Shape(source), axis)): how the TorchScript exporter spells ``source.size(axis)`` in a list."""
    return [
        helper.make_node("Shape", [source], [f"{prefix}_shape"]),
        _int64(f"{prefix}_axis", axis),
        helper.make_node("Gather", [f"{prefix}_shape", f"{prefix}_axis"], [f"{prefix}_size"], axis=0),
        _int64(f"{prefix}_zero", [0]),
        helper.make_node("Unsqueeze", [f"{prefix}_size", f"{prefix}_zero"], [prefix]),
    ]


def _legacy_model(nodes, inputs, outputs):
    """Built as the TorchScript exporter writes it: Constant nodes, no intermediate shapes."""
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _producer_output(model, op_type):
    return next(node for node in model.graph if node.op_type == op_type).outputs[0]


def test_a_view_with_sizes_read_off_the_input_gets_its_heads_and_head_size_after_prepare():
    # q.view(b, s, -1, 16).transpose(1, 2); rotate-half's bound q.size(-1) // 2 then folds to 8
    from tfopt.graph.passes import prepare

    model = _legacy_model(
        [
            *_size("b", "x", 0),
            *_size("s", "x", 1),
            _int64("minus_one", [-1]),
            _int64("head_size", [16]),
            helper.make_node("Concat", ["b", "s", "minus_one", "head_size"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["split"]),
            helper.make_node("Transpose", ["split"], ["heads"], perm=[0, 2, 1, 3]),
            helper.make_node("Shape", ["heads"], ["heads_shape"]),
            _int64("last", 3),
            helper.make_node("Gather", ["heads_shape", "last"], ["width"], axis=0),
            _int64("two", 2),
            helper.make_node("Div", ["width", "two"], ["half"]),
            _int64("zero", [0]),
            helper.make_node("Unsqueeze", ["half", "zero"], ["end"]),
            _int64("start", [0]),
            _int64("axis", [3]),
            helper.make_node("Slice", ["heads", "start", "end", "axis"], ["first_half"]),
        ],
        [_info("x", ["batch", "seq", 64])],
        [_info("first_half", None)],
    )
    prepare(model)
    assert _dims(_producer_output(model, "Reshape")) == ["batch", "seq", 4, 16]
    assert _dims(_producer_output(model, "Transpose")) == ["batch", 4, "seq", 16]
    slice_node = next(node for node in model.graph if node.op_type == "Slice")
    assert slice_node.inputs[2].const_value is not None and slice_node.inputs[2].const_value.numpy().tolist() == [8]
    assert _dims(slice_node.outputs[0]) == ["batch", 4, "seq", 8]


def test_a_minus_one_is_the_size_left_over_when_named_dims_cancel_and_unknown_otherwise():
    from tfopt.graph.shape_facts import dims_from_targets

    model = _legacy_model(
        [
            *_size("b", "x", 0),
            _int64("merged", [-1, 64]),
            helper.make_node("Concat", ["b", "merged"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["joined"]),  # [b, s, 4, 16] -> [b, s, 64]
            _int64("flat", [-1, 16]),
            helper.make_node("Reshape", ["x", "flat"], ["rows"]),  # [b * s * 4, 16]: no dim is named that
            _int64("keep", [0, 0, 2, 32]),
            helper.make_node("Reshape", ["x", "keep"], ["kept"]),  # 0 copies the input's dim
        ],
        [_info("x", ["b", "s", 4, 16])],
        [_info("joined", None), _info("rows", None), _info("kept", None)],
    )  # no shape inference has run: the targets alone say the dims
    assert dims_from_targets(model.graph)
    joined, rows, kept = (node.outputs[0] for node in model.graph if node.op_type == "Reshape")
    assert _dims(joined) == ["b", "s", 64]
    assert _dims(rows) == [None, 16]
    assert _dims(kept) == ["b", "s", 2, 32]


def test_an_unnamed_dim_cancels_against_itself_read_before_a_projection():
    # Swin's legacy heads view: q = Linear(windows) with windows [?, 16, 16] (an unnamed window batch),
    # q.view(windows.size(0), 16, -1, 8): the -1 is 2 although the batch dim has no name.
    from tfopt.graph.shape_facts import dims_from_targets

    weight = numpy_helper.from_array(np.ones((16, 16), np.float32), "weight")
    bias = numpy_helper.from_array(np.ones(16, np.float32), "bias")
    nodes = [
        *_size("b", "windows", 0),
        _int64("rest", [16, -1, 8]),
        helper.make_node("Concat", ["b", "rest"], ["target"], axis=0),
        helper.make_node("MatMul", ["windows", "weight"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["q"]),
        helper.make_node("Reshape", ["q", "target"], ["heads"]),
        *_size("o", "other", 0),
        helper.make_node("Concat", ["o", "rest"], ["other_target"], axis=0),
        helper.make_node("Reshape", ["q", "other_target"], ["unproven"]),  # another input's unnamed dim: no proof
    ]
    graph = helper.make_graph(nodes, "g", [_info("windows", [None, 16, 16]), _info("other", [None, 16, 16])],
                              [_info("heads", None), _info("unproven", None)], [weight, bias])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    for value in (_producer_output(model, "MatMul"), _producer_output(model, "Add")):
        value.shape = ir.Shape([ir.SymbolicDim(None), 16, 16])  # as shape inference leaves them
    assert dims_from_targets(model.graph)
    heads, unproven = (node.outputs[0] for node in model.graph if node.op_type == "Reshape")
    assert _dims(heads)[1:] == [16, 2, 8]
    assert _dims(unproven)[2] is None


def test_an_expand_to_a_where_guarded_size_list_gets_the_repeated_heads():
    # TorchScript's k[:, :, None].expand(b, 2, 2, t, 16): Expand(k, Where(sizes == -1, 1, sizes))
    from tfopt.graph.shape_facts import dims_from_targets

    model = _legacy_model(
        [
            *_size("b", "k", 0),
            *_size("n", "k", 1),
            *_size("t", "k", 3),
            *_size("d", "k", 4),
            _int64("repeat", [2]),
            helper.make_node("Concat", ["b", "n", "repeat", "t", "d"], ["sizes"], axis=0),
            _int64("count", [5]),
            helper.make_node("ConstantOfShape", ["count"], ["ones"], value=helper.make_tensor("v", TensorProto.INT64, [1], [1])),
            _int64("minus_one", -1),
            helper.make_node("Mul", ["ones", "minus_one"], ["minus_ones"]),
            helper.make_node("Equal", ["sizes", "minus_ones"], ["unset"]),
            helper.make_node("Where", ["unset", "ones", "sizes"], ["target"]),
            helper.make_node("Expand", ["k", "target"], ["repeated"]),
        ],
        [_info("k", ["b", 2, 1, "t", 16])],
        [_info("repeated", None)],
    )
    assert dims_from_targets(model.graph)
    assert _dims(_producer_output(model, "Expand")) == ["b", 2, 2, "t", 16]
