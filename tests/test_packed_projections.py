"""MatMuls that share an input become one MatMul and a Split, with the same numbers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tfopt.graph import count_ops
from tfopt.graph.packed_projections import pack_shared_input_matmuls

RNG = np.random.default_rng(3)


def _graph():
    """x @ Wq, x @ Wk, x @ Wv (K = 16), x @ Wo (shared with another reader), y @ Wy (another input)."""
    weights = {name: RNG.standard_normal((16, n)).astype(np.float32) for name, n in (("wq", 16), ("wk", 8), ("wv", 8), ("wy", 4))}
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("MatMul", ["y", "wy"], ["other"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
    ]
    widths = {"q": 16, "k": 8, "v": 8, "other": 4}
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", "s", n]) for name, n in widths.items()]
    graph = helper.make_graph(
        nodes, "packed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 16])], outputs,
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _run(proto: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_shared_input_projections_become_one_matmul_with_the_same_outputs():
    proto = _graph()
    model = ir.serde.deserialize_model(proto)
    assert pack_shared_input_matmuls(model.graph) == 2  # q, k, v -> one; y's MatMul has no partner
    assert count_ops(model) == {"MatMul": 2, "Split": 1, "Relu": 1}
    packed = ir.serde.serialize_model(model)
    onnx.checker.check_model(packed)
    assert [o.name for o in packed.graph.output] == ["q", "k", "v", "other"]
    for shape in [(1, 1, 16), (2, 7, 16)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        for expected, actual in zip(_run(proto, x), _run(packed, x)):
            np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_a_weight_read_twice_is_not_packed():
    proto = _graph()
    proto.graph.node.append(helper.make_node("MatMul", ["x", "wk"], ["k_again"]))
    proto.graph.output.append(helper.make_tensor_value_info("k_again", TensorProto.FLOAT, ["b", "s", 8]))
    model = ir.serde.deserialize_model(proto)
    assert pack_shared_input_matmuls(model.graph) == 1  # q and v only: wk has two readers
    assert count_ops(model)["MatMul"] == 4
