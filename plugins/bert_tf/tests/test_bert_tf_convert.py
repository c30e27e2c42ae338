"""The tf2onnx helpers on their own: the Erfc handler and the reading of tf2onnx's failure log."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from tfopt_bert_tf.convert import convert_function, leftover_ops, unsupported_ops


def test_erfc_converts_to_one_minus_erf(tmp_path):
    import tensorflow as tf

    signature = [tf.TensorSpec([None], tf.float32, name="x")]
    function = tf.function(lambda x: {"y": tf.math.erfc(x)}, input_signature=signature)
    model = convert_function(function, signature, tmp_path / "erfc.onnx", what="erfc")
    assert "Erfc" not in {node.op_type for node in model.graph.node}
    x = np.linspace(-3, 3, 13, dtype=np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / "erfc.onnx")).run(None, {"x": x})
    np.testing.assert_allclose(y, tf.math.erfc(x).numpy(), atol=1e-6)


def test_unsupported_ops_are_read_from_tf2onnx_log():
    log = (
        "Tensorflow op [functional_1/odd_layer_1/Lgamma: Lgamma] is not supported\n"
        "Tensorflow op [other/Lgamma: Lgamma] is not supported\n"
        "Tensorflow op [b/BesselI0e: BesselI0e] is not supported\n"
        "Unsupported ops: Counter({'Lgamma': 2, 'BesselI0e': 1})\n"
    )
    found = unsupported_ops(log)
    assert [(f.op_type, f.node) for f in found] == [("Lgamma", "functional_1/odd_layer_1/Lgamma"), ("BesselI0e", "b/BesselI0e")]
    assert unsupported_ops("all good") == []


def test_leftover_tf_ops_are_found_in_the_graph():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["r"]), onnx.helper.make_node("Igamma", ["r", "r"], ["y"], name="scope/Igamma")],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    found = leftover_ops(onnx.helper.make_model(graph))
    assert [(f.op_type, f.node) for f in found] == [("Igamma", "scope/Igamma")]
