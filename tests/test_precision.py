"""fp16 and int8 conversion: what stays fp32, that blocked chains skip the fp16 round trip, atomic outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt import precision
from tfopt.errors import TfoptError

import tfopt_host_fakes as fakes

H = 8


def _layer_norm_after_matmul() -> onnx.ModelProto:
    """MatMul then a decomposed LayerNorm (nodes unnamed, as hand-built graphs often are)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("ReduceMean", ["h"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["h", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((H, H)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
    ]
    graph = helper.make_graph(
        nodes, "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", H])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", H])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _producer_of(graph, name):
    return next(node for node in graph.node if name in node.output)


def test_block_list_is_ort_default_plus_overflow_prone_ops():
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    block = set(precision.fp16_block_list())
    assert set(DEFAULT_OP_BLOCK_LIST) <= block
    assert {"Pow", "ReduceMean", "Sqrt", "Exp"} <= block
    assert "MatMul" not in block and "SkipLayerNormalization" not in block


def test_fp16_keeps_io_fp32_and_blocked_chains_in_fp32():
    converted = precision.convert_proto_to_fp16(_layer_norm_after_matmul())
    graph = converted.graph
    assert [value.type.tensor_type.elem_type for value in [*graph.input, *graph.output]] == [TensorProto.FLOAT] * 2
    types = {init.name: init.data_type for init in graph.initializer}
    assert types["w"] == TensorProto.FLOAT16 and types["two"] == TensorProto.FLOAT
    pow_node = next(node for node in graph.node if node.op_type == "Pow")
    reduce_var = next(node for node in graph.node if node.op_type == "ReduceMean" and pow_node.output[0] in node.input)
    assert reduce_var is not None  # the square goes to the mean without being rounded to fp16
    assert _producer_of(graph, pow_node.input[0]).op_type == "Cast"  # Pow itself computes in fp32
    assert len({node.name for node in graph.node}) == len(graph.node)


def test_fp16_model_runs_finite_on_large_activations():
    original = _layer_norm_after_matmul()
    x = (np.random.default_rng(1).standard_normal((4, H)) * 300).astype(np.float32)
    expected = ort.InferenceSession(original.SerializeToString()).run(None, {"x": x})[0]
    converted = precision.convert_proto_to_fp16(onnx.ModelProto.FromString(original.SerializeToString()))
    actual = ort.InferenceSession(converted.SerializeToString()).run(None, {"x": x})[0]
    assert np.isfinite(actual).all()
    np.testing.assert_allclose(actual, expected, atol=2e-2)


def test_keep_chains_fp32_without_blocked_ops_changes_nothing():
    converted = precision.convert_proto_to_fp16(_layer_norm_after_matmul(), op_block_list=[], node_block_list=[])
    assert precision.keep_chains_fp32(converted.graph) == 0
    assert {init.name: init.data_type for init in converted.graph.initializer}["two"] == TensorProto.FLOAT16


def test_to_fp16_refuses_to_overwrite_its_input(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(fakes.tiny_model(), path)
    with pytest.raises(TfoptError, match="refusing to overwrite the input"):
        precision.to_fp16(path, path)


@pytest.mark.parametrize("target", ["fp16", "int8"])
def test_corrupt_input_is_a_one_line_error_and_writes_nothing(tmp_path, target):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not a model at all")
    with pytest.raises(TfoptError, match="not a readable ONNX model") as info:
        precision.convert(path, target)
    assert "\n" not in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_int8_quantizes_matmul_and_stays_close(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(fakes.tiny_model(), path)
    result = precision.convert(path, "int8")
    assert result.model_path == tmp_path / "m.int8.onnx" and result.precision == "int8"
    ops = {node.op_type for node in onnx.load(result.model_path).graph.node}
    assert "MatMul" not in ops and {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    feed = fakes.tiny_feeds()[1]
    expected = ort.InferenceSession(str(path)).run(None, feed)[0]
    actual = ort.InferenceSession(str(result.model_path)).run(None, feed)[0]
    assert np.abs(actual - expected).max() < 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx", "m.onnx"]


def test_fp32_conversion_is_the_input_path(tmp_path):
    path = tmp_path / "m.onnx"
    assert precision.convert(path, "fp32").model_path == path
    assert not path.exists()  # nothing written, nothing read


def test_the_op_computing_an_output_stays_fp32():
    """GPT-2's logits MatMul is the classic fp16 overflow: whatever computes an output keeps fp32 weights."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "w_hidden"], ["h"], name="hidden"),
        helper.make_node("MatMul", ["h", "w_logits"], ["logits"], name="lm_head"),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((H, H)).astype(np.float32), "w_hidden"),
        numpy_helper.from_array(rng.standard_normal((H, 16)).astype(np.float32), "w_logits"),
    ]
    graph = helper.make_graph(
        nodes, "lm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", H])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    converted = precision.convert_proto_to_fp16(onnx.ModelProto.FromString(model.SerializeToString()))  # converts in place
    weights = {init.name: init.data_type for init in converted.graph.initializer}
    assert weights["w_logits"] == TensorProto.FLOAT
    assert weights["w_hidden"] == TensorProto.FLOAT16
    # ... and its fp32 result reaches the output without an fp16 round trip
    node = _producer_of(converted.graph, "logits")
    while node.op_type in ("Cast", "Identity"):
        assert node.op_type == "Identity" or node.attribute[0].i != TensorProto.FLOAT16
        node = _producer_of(converted.graph, node.input[0])
    assert node.name == "lm_head"
    x = rng.standard_normal((3, H)).astype(np.float32)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0], atol=0.05)


def _is_sorted(graph) -> bool:
    seen = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    for node in graph.node:
        if any(name and name not in seen for name in node.input):
            return False
        seen.update(node.output)
    return True


def test_fp16_of_a_float_input_model_is_topologically_sorted():
    """The converter appends the Cast of a float graph input after its consumer; the checker refused that."""
    converted = precision.convert_proto_to_fp16(_layer_norm_after_matmul())
    assert any(node.input[0] == "x" and node.op_type == "Cast" for node in converted.graph.node)
    assert _is_sorted(converted.graph)
    onnx.checker.check_model(converted)


def test_sort_nodes_orders_consumers_after_producers_and_keeps_sorted_graphs_as_they_are():
    from tfopt.graph.input_checks import sort_nodes

    nodes = [
        helper.make_node("Relu", ["b"], ["c"], name="late"),
        helper.make_node("Neg", ["x"], ["a"], name="first"),
        helper.make_node("Abs", ["a"], ["b"], name="second"),
        helper.make_node("Sigmoid", ["x"], ["d"], name="free"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [])
    sort_nodes(graph)  # the loader's sort: by depth, then file position
    assert [node.name for node in graph.node] == ["first", "free", "second", "late"]
    sort_nodes(graph)
    assert [node.name for node in graph.node] == ["first", "free", "second", "late"]


def test_first_line_keeps_what_follows_a_newline():
    from tfopt.errors import first_line

    exc = ValueError("Nodes in a graph must be topologically sorted, however input 'c' of node: \nname: late OpType: Relu\n is not output of any previous nodes.")
    line = first_line(exc)
    assert "\n" not in line and "node 'late' (Relu)" in line and line.endswith("previous nodes.")
