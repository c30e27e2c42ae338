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


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("square", ["Pow", "Mul"])
def test_decomposed_layer_norm_becomes_one_op(opset, square):
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
    original = _model(nodes, [_float_input()], inits, opset=opset)
    fused, stats = _fuse(original)
    assert count_ops(fused) == {"LayerNormalization": 1}
    assert stats.rule_counts["DecomposedLayerNorm"] == 1
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
