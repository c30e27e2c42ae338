"""Equal dims under different names become one symbol, from what the graph computes (tfopt.graph.shape_facts)."""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

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
