"""Each shared fusion rule on small hand-built graphs: the fused op appears AND the numbers match.

Exported-model coverage (all BERT-family variants) lives in plugins/bert_pt/tests; these
graphs exercise the forms exporters other than torch write (decomposed LayerNorm, erf and
tanh Gelu formulas, bias on either side of the residual Add) and the cases that must NOT fuse.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt.graph import count_ops, fuse_model
from tfopt.results import ModelInfo

H = 16  # hidden size of the toy graphs
RNG = np.random.default_rng(0)


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _model(nodes, inputs, initializers, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "toy", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _float_input(name="x"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "seq", H])


def _run(model: onnx.ModelProto | ir.Model, feeds: dict) -> np.ndarray:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _fuse(proto: onnx.ModelProto, **kwargs) -> tuple[ir.Model, object]:
    model = ir.serde.deserialize_model(proto)
    stats = fuse_model(model, ModelInfo(model_type=kwargs.pop("model_type", "custom")), **kwargs)
    return model, stats


def _assert_same(original: onnx.ModelProto, fused: ir.Model, feeds: dict, tol=1e-5):
    expected, actual = _run(original, feeds), _run(fused, feeds)
    np.testing.assert_allclose(actual, expected, atol=tol, rtol=0)


def _decomposed_layer_norm(opset, square="Pow"):
    """x -> ReduceMean/Sub/(Pow or d*d)/ReduceMean/Add/Sqrt/Div/Mul/Add -> y, axes as the opset spells them."""
    axes_inputs = ["axes"] if opset >= 18 else []
    axes_attr = {} if opset >= 18 else {"axes": [-1]}
    nodes = [
        helper.make_node("ReduceMean", ["x", *axes_inputs], ["mean"], **axes_attr),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]) if square == "Pow" else helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", *axes_inputs], ["var"], **axes_attr),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["norm"]),
        helper.make_node("Mul", ["norm", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["y"]),
    ]
    inits = [_const("two", 2.0), _const("eps", 1e-6), _const("gamma", RNG.normal(size=H)), _const("beta", RNG.normal(size=H))]
    if axes_inputs:
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes"))
    return _model(nodes, [_float_input()], inits, opset=opset)


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("square", ["Pow", "Mul"])
def test_decomposed_layer_norm_becomes_one_op(opset, square):
    original = _decomposed_layer_norm(opset, square)
    fused, stats = _fuse(original)
    assert count_ops(fused) == {"LayerNormalization": 1}
    assert stats.rule_counts["DecomposedLayerNorm"] == 1
    _assert_same(original, fused, {"x": RNG.normal(size=(2, 5, H)).astype(np.float32)})


def _after_layer_norm(proto: onnx.ModelProto, node: onnx.NodeProto, *initializers) -> onnx.ModelProto:
    """The decomposed LayerNorm's output goes through ``node`` (reading "ln", writing "y")."""
    for existing in proto.graph.node:
        if existing.output[0] == "y":
            existing.output[0] = "ln"
    proto.graph.node.append(node)
    proto.graph.initializer.extend(initializers)
    return proto


@pytest.mark.parametrize("opset", [11, 12, 14, 16])
def test_below_opset_17_the_opset_is_raised_when_every_op_means_the_same_there(opset):
    """Unsqueeze's axes move from attribute to input at 13; Softmax over the last axis reads alike."""
    original = _decomposed_layer_norm(opset)
    original = _after_layer_norm(original, helper.make_node("Softmax", ["ln"], ["soft"], axis=-1))
    if opset < 13:
        original.graph.node.append(helper.make_node("Unsqueeze", ["soft"], ["y"], axes=[1]))
    else:
        original.graph.node.append(helper.make_node("Unsqueeze", ["soft", "one_axis"], ["y"]))
        original.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "one_axis"))
    fused, stats = _fuse(original)
    assert count_ops(fused) == {"LayerNormalization": 1, "Softmax": 1, "Unsqueeze": 1}
    assert fused.opset_imports[""] == 17
    assert any("opset raised" in note for note in stats.notes), stats.notes
    onnx.checker.check_model(ir.serde.serialize_model(fused), full_check=True)
    _assert_same(original, fused, {"x": RNG.normal(size=(2, 5, H)).astype(np.float32)})


def test_below_opset_17_a_layer_norm_stays_in_that_opsets_ops_when_an_op_would_change_meaning():
    """Softmax without ``axis`` before 13 normalizes over everything from axis 1: at 17 it would not."""
    original = _after_layer_norm(_decomposed_layer_norm(12), helper.make_node("Softmax", ["ln"], ["y"]))
    fused, stats = _fuse(original)
    assert stats.rule_counts["DecomposedLayerNorm"] == 1  # matched, then written back: nothing newer than the opset
    assert "LayerNormalization" not in count_ops(fused)
    assert fused.opset_imports[""] == 12
    onnx.checker.check_model(ir.serde.serialize_model(fused), full_check=True)
    _assert_same(original, fused, {"x": RNG.normal(size=(2, 5, H)).astype(np.float32)})


def test_below_opset_17_a_layer_norm_the_input_had_is_kept():
    """ONNX Runtime runs LayerNormalization at any opset (it registers it itself); tfopt leaves the user's node alone."""
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-6)]
    original = _model(nodes, [_float_input()], [_const("gamma", RNG.normal(size=H)), _const("beta", RNG.normal(size=H))], opset=14)
    fused, _ = _fuse(original)
    assert count_ops(fused) == {"LayerNormalization": 1}
    _assert_same(original, fused, {"x": RNG.normal(size=(2, 5, H)).astype(np.float32)})


def test_reduce_over_other_axis_is_not_layer_norm():
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["norm"]),
        helper.make_node("Mul", ["norm", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["y"]),
    ]
    inits = [_const("eps", 1e-6), _const("gamma", np.ones(H)), _const("beta", np.zeros(H))]
    fused, _ = _fuse(_model(nodes, [_float_input()], inits))
    assert "LayerNormalization" not in count_ops(fused)


def _dense(nodes, inits, source, name, width=H):
    inits += [_const(f"{name}_w", RNG.normal(size=(H, width)) * 0.3), _const(f"{name}_b", RNG.normal(size=width))]
    nodes += [
        helper.make_node("MatMul", [source, f"{name}_w"], [f"{name}_mm"]),
        helper.make_node("Add", [f"{name}_b", f"{name}_mm"], [name]),  # bias first, as the legacy exporter writes it
    ]
    return name


@pytest.mark.parametrize("form", ["(x*f)*h", "(x*h)*f", "x*(f*h)"])
def test_erf_gelu_with_bias_becomes_bias_gelu(form):
    nodes, inits = [], [_const("sqrt2", math.sqrt(2.0)), _const("one", 1.0), _const("half", 0.5)]
    x = _dense(nodes, inits, "x", "h")
    nodes += [
        helper.make_node("Div", [x, "sqrt2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["factor"]),
    ]
    if form == "(x*f)*h":
        nodes += [helper.make_node("Mul", [x, "factor"], ["p"]), helper.make_node("Mul", ["p", "half"], ["y"])]
    elif form == "(x*h)*f":
        nodes += [helper.make_node("Mul", [x, "half"], ["p"]), helper.make_node("Mul", ["p", "factor"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["factor", "half"], ["p"]), helper.make_node("Mul", [x, "p"], ["y"])]
    original = _model(nodes, [_float_input()], inits)
    fused, _ = _fuse(original)
    assert count_ops(fused) == {"MatMul": 1, "BiasGelu": 1}
    _assert_same(original, fused, {"x": RNG.normal(size=(2, 3, H)).astype(np.float32)})


def test_tanh_gelu_becomes_fast_gelu_with_bias():
    nodes, inits = [], [_const("three", 3.0), _const("c", 0.044715), _const("k", math.sqrt(2 / math.pi)), _const("one", 1.0), _const("half", 0.5)]
    x = _dense(nodes, inits, "x", "h")
    nodes += [
        helper.make_node("Pow", [x, "three"], ["cube"]),
        helper.make_node("Mul", ["cube", "c"], ["cc"]),
        helper.make_node("Add", [x, "cc"], ["inner"]),
        helper.make_node("Mul", ["inner", "k"], ["arg"]),
        helper.make_node("Tanh", ["arg"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["factor"]),
        helper.make_node("Mul", [x, "half"], ["hx"]),
        helper.make_node("Mul", ["hx", "factor"], ["y"]),
    ]
    original = _model(nodes, [_float_input()], inits)
    fused, _ = _fuse(original)
    assert count_ops(fused) == {"MatMul": 1, "FastGelu": 1}
    _assert_same(original, fused, {"x": RNG.normal(size=(2, 3, H)).astype(np.float32)})


def test_wrong_gelu_constant_is_left_alone():
    nodes, inits = [], [_const("sqrt2", 1.5), _const("one", 1.0), _const("half", 0.5)]
    nodes += [
        helper.make_node("Div", ["x", "sqrt2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["factor"]),
        helper.make_node("Mul", ["x", "factor"], ["p"]),
        helper.make_node("Mul", ["p", "half"], ["y"]),
    ]
    fused, _ = _fuse(_model(nodes, [_float_input()], inits))
    assert "Gelu" not in count_ops(fused) and "Erf" in count_ops(fused)


@pytest.mark.parametrize("bias_side", ["first", "second", "none"])
def test_residual_add_and_layer_norm_become_skip_layer_norm(bias_side):
    nodes, inits = [], [_const("gamma", RNG.normal(size=H)), _const("beta", RNG.normal(size=H))]
    if bias_side == "none":
        inits.append(_const("w", RNG.normal(size=(H, H))))
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["h"]))
        branch = "h"
    else:
        branch = _dense(nodes, inits, "x", "h")
    residual = [branch, "skip"] if bias_side != "second" else ["skip", branch]
    nodes += [
        helper.make_node("Add", residual, ["sum"]),
        helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5),
    ]
    original = _model(nodes, [_float_input(), _float_input("skip")], inits)
    fused, stats = _fuse(original)
    counts = count_ops(fused)
    assert counts == {"MatMul": 1, "SkipLayerNormalization": 1}
    skip_node = next(n for n in fused.graph if n.op_type == "SkipLayerNormalization")
    assert len(skip_node.inputs) == (4 if bias_side == "none" else 5)
    feeds = {"x": RNG.normal(size=(2, 4, H)).astype(np.float32), "skip": RNG.normal(size=(2, 4, H)).astype(np.float32)}
    _assert_same(original, fused, feeds)


def test_layer_norm_over_non_last_axis_is_not_skip_layer_norm():
    nodes = [
        helper.make_node("Add", ["x", "skip"], ["sum"]),
        helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=1),
    ]
    inits = [_const("gamma", np.ones((4, H))), _const("beta", np.zeros((4, H)))]
    fused, _ = _fuse(_model(nodes, [_float_input(), _float_input("skip")], inits))
    assert "SkipLayerNormalization" not in count_ops(fused)


def test_unknown_fusion_name_is_rejected():
    from tfopt.errors import TfoptError

    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(TfoptError, match="unknown fusion"):
        _fuse(_model(nodes, [_float_input()], []), disabled={"not_a_fusion"})


def test_disabled_fusion_does_not_run():
    nodes = [
        helper.make_node("Add", ["x", "skip"], ["sum"]),
        helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1),
    ]
    inits = [_const("gamma", np.ones(H)), _const("beta", np.zeros(H))]
    fused, stats = _fuse(_model(nodes, [_float_input(), _float_input("skip")], inits), disabled={"skip_layer_norm"})
    assert count_ops(fused) == {"Add": 1, "LayerNormalization": 1}
    assert "SkipLayerNorm" not in stats.rule_counts


# --- Keras 3 / keras-hub forms (tf2onnx): EinsumDense, LayerNorm with [1, 1, H] params, SelectV2 masks ---

HEADS = 2
HEAD_SIZE = H // HEADS


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _keras_layer_norm(nodes, inits, x, name, out=None, reduce="GlobalAveragePool"):
    """keras-hub's LayerNorm through tf2onnx: x * inv + ((-mean) * inv + beta), gamma/beta [1, 1, H].

    ``reduce="ReduceMean"``: the means as ReduceMean over the last axis (keras2onnx's form).
    """
    out = out or f"{name}_out"

    def mean(source, target):
        if reduce == "GlobalAveragePool":
            return helper.make_node("GlobalAveragePool", [source], [target])
        return helper.make_node("ReduceMean", [source], [target], axes=[-1], keepdims=1)

    inits += [
        _const(f"{name}_eps", 1e-12),
        _const(f"{name}_gamma", 1 + 0.1 * RNG.normal(size=(1, 1, H))),
        _const(f"{name}_beta", 0.1 * RNG.normal(size=(1, 1, H))),
    ]
    nodes += [
        mean(x, f"{name}_mean"),
        helper.make_node("Neg", [f"{name}_mean"], [f"{name}_neg"]),
        helper.make_node("Sub", [x, f"{name}_mean"], [f"{name}_d"]),
        helper.make_node("Mul", [f"{name}_d", f"{name}_d"], [f"{name}_sq"]),
        mean(f"{name}_sq", f"{name}_var"),
        helper.make_node("Add", [f"{name}_var", f"{name}_eps"], [f"{name}_ve"]),
        helper.make_node("Sqrt", [f"{name}_ve"], [f"{name}_std"]),
        helper.make_node("Reciprocal", [f"{name}_std"], [f"{name}_rstd"]),
        helper.make_node("Mul", [f"{name}_rstd", f"{name}_gamma"], [f"{name}_inv"]),
        helper.make_node("Mul", [x, f"{name}_inv"], [f"{name}_scaled"]),
        helper.make_node("Mul", [f"{name}_neg", f"{name}_inv"], [f"{name}_shift0"]),
        helper.make_node("Add", [f"{name}_shift0", f"{name}_beta"], [f"{name}_shift"]),
        helper.make_node("Add", [f"{name}_scaled", f"{name}_shift"], [out]),
    ]
    return out


@pytest.mark.parametrize("reduce", ["GlobalAveragePool", "ReduceMean"])
def test_keras_layer_norm_becomes_one_op(reduce):
    nodes, inits = [], []
    _keras_layer_norm(nodes, inits, "x", "ln", out="y", reduce=reduce)
    original = _model(nodes, [_float_input()], inits)
    fused, stats = _fuse(original)
    assert count_ops(fused) == {"LayerNormalization": 1}
    assert stats.rule_counts["TfLayerNorm" if reduce == "GlobalAveragePool" else "TfLayerNorm[ReduceMean]"] == 1
    _assert_same(original, fused, {"x": RNG.normal(size=(2, 5, H)).astype(np.float32)})


def test_keras_layer_norm_with_per_position_gamma_is_left_alone():
    nodes, inits = [], []
    _keras_layer_norm(nodes, inits, "x", "ln", out="y")
    inits[1] = _const("ln_gamma", np.ones((5, 1, H)))  # not a [1, 1, H] row: LayerNormalization cannot take it
    fused, _ = _fuse(_model(nodes, [_float_input()], inits))
    assert "LayerNormalization" not in count_ops(fused)


def _einsum_prologue(nodes, inits, x, name):
    """What tf2onnx writes once per EinsumDense input: Unsqueeze(x, [2, 3]), its flatten and Shape()[:2]."""
    inits += [_ints(f"{name}_axes", [2, 3]), _ints(f"{name}_flat", [-1, H]), _ints(f"{name}_lead", [0, 1])]
    nodes += [
        helper.make_node("Unsqueeze", [x, f"{name}_axes"], [f"{name}_u"]),
        helper.make_node("Reshape", [f"{name}_u", f"{name}_flat"], [f"{name}_f"]),
        helper.make_node("Shape", [f"{name}_u"], [f"{name}_shape"]),
        helper.make_node("Gather", [f"{name}_shape", f"{name}_lead"], [f"{name}_bs"], axis=0),
    ]
    return f"{name}_f", f"{name}_bs"


def _einsum_heads(nodes, inits, flat, lead, name, bias=True):
    """einsum("abc,cde->abde") (+ a [N, Hd] bias) as tf2onnx writes it: Gemm, 5-D unflatten, Squeeze(4)."""
    inits += [_const(f"{name}_w", RNG.normal(size=(H, H)) * 0.3), _ints(f"{name}_tail", [HEADS, HEAD_SIZE, 1]), _ints(f"{name}_sq", [4])]
    nodes += [
        helper.make_node("Gemm", [flat, f"{name}_w"], [f"{name}_g"], transB=1, beta=0.0),
        helper.make_node("Concat", [lead, f"{name}_tail"], [f"{name}_target"], axis=0),
        helper.make_node("Reshape", [f"{name}_g", f"{name}_target"], [f"{name}_r"]),
        helper.make_node("Squeeze", [f"{name}_r", f"{name}_sq"], [name if not bias else f"{name}_nobias"]),
    ]
    if bias:
        inits.append(_const(f"{name}_b", RNG.normal(size=(HEADS, HEAD_SIZE)) * 0.3))
        nodes.append(helper.make_node("Add", [f"{name}_nobias", f"{name}_b"], [name]))
    return name


def _einsum_merge(nodes, inits, context, name, out, shape_of=None):
    """einsum("abcd,cde->abe") + bias on a (B, N, S, Hd) context: Unsqueeze/Transpose to 5-D, Gemm, Squeeze(3, 4)."""
    inits += [
        _const(f"{name}_w", RNG.normal(size=(H, H)) * 0.3),
        _const(f"{name}_b", RNG.normal(size=H)),
        _ints(f"{name}_one", [1]),
        _ints(f"{name}_lead", [0, 1]),
        _ints(f"{name}_merged", [3, 4]),
        _ints(f"{name}_minus_one", [-1]),
        _ints(f"{name}_tail", [H, 1, 1]),
    ]
    nodes += [
        helper.make_node("Unsqueeze", [context, f"{name}_one"], [f"{name}_u"]),
        helper.make_node("Transpose", [f"{name}_u"], [f"{name}_t"], perm=[0, 3, 1, 2, 4]),
        helper.make_node("Shape", [shape_of or f"{name}_t"], [f"{name}_shape"]),
        helper.make_node("Gather", [f"{name}_shape", f"{name}_lead"], [f"{name}_bs"], axis=0),
        helper.make_node("Gather", [f"{name}_shape", f"{name}_merged"], [f"{name}_nh"], axis=0),
        helper.make_node("ReduceProd", [f"{name}_nh"], [f"{name}_k"], keepdims=1),
        helper.make_node("Concat", [f"{name}_minus_one", f"{name}_k"], [f"{name}_flat"], axis=0),
        helper.make_node("Reshape", [f"{name}_t", f"{name}_flat"], [f"{name}_f"]),
        helper.make_node("Gemm", [f"{name}_f", f"{name}_w"], [f"{name}_g"], transB=1, beta=0.0),
        helper.make_node("Concat", [f"{name}_bs", f"{name}_tail"], [f"{name}_target"], axis=0),
        helper.make_node("Reshape", [f"{name}_g", f"{name}_target"], [f"{name}_r"]),
        helper.make_node("Squeeze", [f"{name}_r", f"{name}_merged"], [f"{name}_sq"]),
        helper.make_node("Add", [f"{name}_sq", f"{name}_b"], [out]),
    ]
    return out


def _heads_input(name="ctx"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", HEADS, "seq", HEAD_SIZE])


@pytest.mark.parametrize("bias", [True, False])
def test_einsum_dense_into_heads_becomes_matmul(bias):
    nodes, inits = [], []
    flat, lead = _einsum_prologue(nodes, inits, "x", "in")
    _einsum_heads(nodes, inits, flat, lead, "y", bias=bias)
    original = _model(nodes, [_float_input()], inits)
    fused, stats = _fuse(original)
    counts = count_ops(fused)
    assert counts.get("MatMul") == 1 and counts.get("Reshape") == 1 and counts.get("Add", 0) == int(bias)
    assert not {"Gemm", "Squeeze", "Unsqueeze"} & set(counts)
    assert stats.rule_counts["EinsumDense"] == 1 and stats.rule_counts["HeadBias"] == int(bias)
    _assert_same(original, fused, {"x": RNG.normal(size=(2, 5, H)).astype(np.float32)})


def test_einsum_dense_merging_heads_becomes_matmul_add():
    nodes, inits = [], []
    _einsum_merge(nodes, inits, "ctx", "o", "y")
    original = _model(nodes, [_heads_input()], inits)
    fused, stats = _fuse(original)
    counts = count_ops(fused)
    assert counts.get("MatMul") == 1 and counts.get("Add") == 1 and counts.get("Transpose") == 1
    assert not {"Gemm", "Squeeze", "Unsqueeze", "ReduceProd"} & set(counts)
    assert stats.rule_counts["EinsumDense"] == 1
    _assert_same(original, fused, {"ctx": RNG.normal(size=(3, HEADS, 4, HEAD_SIZE)).astype(np.float32)})


def test_einsum_unflatten_sized_by_another_tensor_is_left_alone():
    # The 5-D target takes batch/sequence from a different tensor: nothing proves the flatten kept B x S rows.
    nodes, inits = [], []
    _einsum_merge(nodes, inits, "ctx", "o", "y", shape_of="other")
    other = helper.make_tensor_value_info("other", TensorProto.FLOAT, ["b", "s", 1, HEADS, HEAD_SIZE])
    fused, stats = _fuse(_model(nodes, [_heads_input(), other], inits))
    assert "Gemm" in count_ops(fused) and stats.rule_counts["EinsumDense"] == 0


def test_transposed_scores_become_query_times_key():
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["kt", "qt"], ["s"]),
        helper.make_node("Transpose", ["s"], ["y"], perm=[0, 1, 3, 2]),
    ]
    heads = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "seq", HEADS, HEAD_SIZE])  # noqa: E731
    original = _model(nodes, [heads("q"), heads("k")], [])
    fused, stats = _fuse(original)
    assert count_ops(fused) == {"MatMul": 1, "Transpose": 2}
    assert stats.rule_counts["TransposedScores"] == 1
    perms = sorted(tuple(n.attributes.get_ints("perm")) for n in fused.graph if n.op_type == "Transpose")
    assert perms == [(0, 2, 1, 3), (0, 2, 3, 1)]
    feeds = {name: RNG.normal(size=(2, 5, HEADS, HEAD_SIZE)).astype(np.float32) for name in ("q", "k")}
    _assert_same(original, fused, feeds)


def _keras_attention(bias: bool, mask_inputs=("mask",), inverted=False):
    """keras-hub self-attention as tf2onnx writes it: EinsumDense Q/K/V, Q scaled before its transpose,
    K.Q^T transposed back, SelectV2 masks before and after Softmax, EinsumDense output projection."""
    nodes, inits = [], [_const("scale", 1 / math.sqrt(HEAD_SIZE)), _const("fill", -1e9), _const("zero", 0.0), _ints("axis1", [1])]
    flat, lead = _einsum_prologue(nodes, inits, "x", "in")
    q, k, v = (_einsum_heads(nodes, inits, flat, lead, name, bias=bias) for name in ("q", "k", "v"))
    nodes += [helper.make_node("Unsqueeze", [mask_inputs[0], "axis1"], ["m3"])]
    if len(mask_inputs) == 2:  # a condition that also reads another input
        nodes += [helper.make_node("Mul", ["m3", mask_inputs[1]], ["m3b"])]
    m3 = "m3b" if len(mask_inputs) == 2 else "m3"
    nodes += [
        helper.make_node("Cast", [m3], ["m3_bool0"], to=TensorProto.BOOL),
        helper.make_node("Not" if inverted else "Identity", ["m3_bool0"], ["m3_bool"]),
        helper.make_node("Unsqueeze", ["m3_bool", "axis1"], ["cond"]),
        helper.make_node("Cast", ["cond"], ["keep"], to=TensorProto.FLOAT),
        helper.make_node("Not", ["cond"], ["not_cond"]),
        helper.make_node("Cast", ["not_cond"], ["drop"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["drop", "fill"], ["fill_term"]),
        helper.make_node("Mul", ["drop", "zero"], ["zero_term"]),
        helper.make_node("Mul", [q, "scale"], ["q_scaled"]),
        helper.make_node("Transpose", [k], ["k_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["q_scaled"], ["q_t"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["k_t", "q_t"], ["kq"]),
        helper.make_node("Transpose", ["kq"], ["scores"], perm=[0, 1, 3, 2]),
        helper.make_node("Mul", ["keep", "scores"], ["kept_scores"]),
        helper.make_node("Add", ["kept_scores", "fill_term"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("Mul", ["keep", "probs"], ["kept_probs"]),
        helper.make_node("Add", ["kept_probs", "zero_term"], ["probs_masked"]),
        helper.make_node("Transpose", [v], ["v_t"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["probs_masked", "v_t"], ["context"]),
    ]
    _einsum_merge(nodes, inits, "context", "o", "y")
    inputs = [_float_input()] + [helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", "seq"]) for name in mask_inputs]
    return _model(nodes, inputs, inits)


def _padding_mask(batch, seq):
    mask = np.ones((batch, seq), np.int32)
    mask[1, seq - 2 :] = 0  # right padding
    mask[2, :3] = 0  # left padding
    return mask


@pytest.mark.parametrize("target", ["cpu", "cuda"])
@pytest.mark.parametrize("bias", [True, False])
def test_keras_attention_becomes_one_op(target, bias):
    original = _keras_attention(bias)
    fused, stats = _fuse(original, target=target)
    counts = count_ops(fused)
    fused_op = "MultiHeadAttention" if target == "cpu" else "Attention"
    assert counts.get(fused_op) == 1 and "Softmax" not in counts
    assert stats.rule_counts["TransposedScores"] == 1 and stats.rule_counts["Attention"] == 1
    assert stats.rule_counts["EinsumDense"] == 4 and stats.rule_counts["HeadBias"] == (3 if bias else 0)
    attention = next(n for n in fused.graph if n.op_type == fused_op)
    assert attention.inputs[-1].name == "mask"  # the raw 2-D mask, already int32
    feeds = {"x": RNG.normal(size=(3, 7, H)).astype(np.float32), "mask": _padding_mask(3, 7)}
    _assert_same(original, fused, feeds, tol=1e-4)


@pytest.mark.parametrize("case", ["mask_from_two_inputs", "inverted_mask"])
def test_keras_attention_with_other_mask_is_left_alone(case):
    # Both still read the mask input, but the fused op's mask_index would not mean the same.
    if case == "mask_from_two_inputs":
        original = _keras_attention(True, mask_inputs=("mask", "other"))
    else:
        original = _keras_attention(True, inverted=True)
    fused, stats = _fuse(original)
    assert "Softmax" in count_ops(fused) and stats.rule_counts["Attention"] == 0


def _keras_embeddings(word_rows_in_wrap=32):
    """keras-hub embeddings: negative-id wraps before the token/segment Gathers, the position
    table sliced to the sequence length and broadcast, then the Keras LayerNorm."""
    vocab, positions, types = 32, 16, 2
    inits = [
        _const("word", RNG.normal(size=(vocab, H))),
        _const("position", RNG.normal(size=(positions, H))),
        _const("segment", RNG.normal(size=(types, H))),
        _const("f_zero", 0.0),
        numpy_helper.from_array(np.array(word_rows_in_wrap, np.int32), "word_rows"),
        numpy_helper.from_array(np.array(types, np.int32), "segment_rows"),
        numpy_helper.from_array(np.array([H], np.int32), "width"),
        numpy_helper.from_array(np.array([-1], np.int32), "minus_one"),
        numpy_helper.from_array(np.array([2**31 - 1], np.int32), "big"),
        numpy_helper.from_array(np.array([0, 0], np.int32), "begin"),
        _ints("i0", [0]),
        _ints("i1", [1]),
        _ints("i2", [2]),
    ]
    nodes = []

    def wrapped(ids, rows, name):
        nodes.extend(
            [
                helper.make_node("Cast", [ids], [f"{name}_f"], to=TensorProto.FLOAT),
                helper.make_node("Less", [f"{name}_f", "f_zero"], [f"{name}_neg"]),
                helper.make_node("Add", [ids, rows], [f"{name}_shifted"]),
                helper.make_node("Cast", [f"{name}_neg"], [f"{name}_neg_i"], to=TensorProto.INT32),
                helper.make_node("Mul", [f"{name}_neg_i", f"{name}_shifted"], [f"{name}_a"]),
                helper.make_node("Not", [f"{name}_neg"], [f"{name}_pos"]),
                helper.make_node("Cast", [f"{name}_pos"], [f"{name}_pos_i"], to=TensorProto.INT32),
                helper.make_node("Mul", [ids, f"{name}_pos_i"], [f"{name}_b"]),
                helper.make_node("Add", [f"{name}_a", f"{name}_b"], [f"{name}_ids"]),
            ]
        )
        return f"{name}_ids"

    word_ids, segment_ids = wrapped("ids", "word_rows", "w"), wrapped("seg", "segment_rows", "s")
    nodes += [
        helper.make_node("Gather", ["word", word_ids], ["word_e"], axis=0),
        helper.make_node("Gather", ["segment", segment_ids], ["segment_e"], axis=0),
        # sequence length n from Shape(ids); TF Slice(begin, size=[n, H]) -> ends = size + (size == -1) * INT_MAX + begin
        helper.make_node("Shape", [word_ids], ["ids_shape64"]),
        helper.make_node("Cast", ["ids_shape64"], ["ids_shape"], to=TensorProto.INT32),
        helper.make_node("Slice", ["ids_shape", "i1", "i2", "i0"], ["n"]),
        helper.make_node("Slice", ["ids_shape", "i0", "i1", "i0"], ["b"]),
        helper.make_node("Concat", ["n", "width"], ["size"], axis=0),
        helper.make_node("Equal", ["minus_one", "size"], ["to_end"]),
        helper.make_node("Cast", ["to_end"], ["to_end_i"], to=TensorProto.INT32),
        helper.make_node("Mul", ["to_end_i", "big"], ["extra"]),
        helper.make_node("Add", ["size", "extra"], ["length"]),
        helper.make_node("Add", ["length", "begin"], ["ends"]),
        helper.make_node("Slice", ["position", "begin", "ends"], ["rows"]),
        helper.make_node("Concat", ["b", "n", "width"], ["target32"], axis=0),
        helper.make_node("Cast", ["target32"], ["target"], to=TensorProto.INT64),
        helper.make_node("Expand", ["rows", "target"], ["position_e"]),
        helper.make_node("Add", ["word_e", "position_e"], ["sum1"]),
        helper.make_node("Add", ["sum1", "segment_e"], ["sum"]),
    ]
    _keras_layer_norm(nodes, inits, "sum", "ln", out="y")
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", "seq"]) for name in ("ids", "seg")]
    return _model(nodes, inputs, inits)


def test_keras_embeddings_become_embed_layer_norm():
    original = _keras_embeddings()
    fused, stats = _fuse(original)
    counts = count_ops(fused)
    assert counts.get("EmbedLayerNormalization") == 1
    assert not {"Gather", "Less", "Not", "GlobalAveragePool", "LayerNormalization"} & set(counts)
    assert stats.rule_counts["WrappedIdsLookup"] == 2 and stats.rule_counts["SlicedPositionTable"] == 1
    for batch, seq in [(1, 5), (3, 9), (2, 16)]:
        feeds = {"ids": RNG.integers(0, 32, size=(batch, seq)).astype(np.int32), "seg": RNG.integers(0, 2, size=(batch, seq)).astype(np.int32)}
        _assert_same(original, fused, feeds)


def test_wrap_that_is_not_the_table_size_is_left_alone():
    # ids + 33 for negative ids on a 32-row table is not Gather's own wrap: the word ids stay computed.
    fused, stats = _fuse(_keras_embeddings(word_rows_in_wrap=33))
    assert "EmbedLayerNormalization" not in count_ops(fused)
    assert stats.rule_counts["WrappedIdsLookup"] == 1  # the segment wrap is still exact


def test_reshaped_weight_over_the_folding_limit_becomes_a_constant():
    """Keras writes its output-projection weight as Reshape(W[N, Hd, D]); at bert-base size
    (768 x 768) constant folding skips it, and no rule would see a constant weight."""
    from tfopt.graph.passes import prepare
    from tfopt.graph.values import constant_array

    heads, head_size, width = 12, 64, 96  # 73,728 elements: over the folder's 8,192 input limit
    weight = RNG.normal(size=(heads, head_size, width)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["w3d", "shape"], ["w2d"]),
        helper.make_node("MatMul", ["x", "w2d"], ["y"]),
    ]
    inits = [numpy_helper.from_array(weight, "w3d"), numpy_helper.from_array(np.array([heads * head_size, width], np.int64), "shape")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", heads * head_size])]
    original = _model(nodes, inputs, inits)
    model = ir.serde.deserialize_model(original)
    prepare(model)
    assert count_ops(model) == {"MatMul": 1}
    matmul = next(iter(model.graph))
    assert constant_array(matmul.inputs[1]).shape == (heads * head_size, width)
    _assert_same(original, model, {"x": RNG.normal(size=(2, 3, heads * head_size)).astype(np.float32)}, tol=1e-4)
