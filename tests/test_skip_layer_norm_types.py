"""SkipLayerNormalization binds one type to its inputs and weights; LayerNormalization does not.

ONNX Runtime's C++ fusion test input ``skip_layer_norm_no_beta_with_cast.onnx`` normalizes an
fp16 residual sum with fp32 weights (and no beta): fused as is, the model no longer loads. The
rule leaves such a norm alone; with weights of the input's type it fuses.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt.graph import fuse_file
from tfopt.results import ModelInfo


def _residual_norm(path, weight_type: int) -> None:
    gamma = numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(helper.tensor_dtype_to_np_dtype(weight_type)), "gamma")
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["total"]),
         helper.make_node("LayerNormalization", ["total", "gamma"], ["out"], axis=-1, epsilon=1e-5)],
        "residual_norm",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT16, ["batch", "sequence", 8]) for name in ("a", "b")],
        [helper.make_tensor_value_info("out", weight_type, ["batch", "sequence", 8])],  # ONNX Runtime computes it in V
        initializer=[gamma],
    )
    # opset 12: LayerNormalization is then ONNX Runtime's own registration, which takes weights of another float type
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7), str(path))


@pytest.mark.parametrize("weight_type,fused", [(TensorProto.FLOAT, False), (TensorProto.FLOAT16, True)])
def test_skip_layer_norm_only_where_weights_share_the_input_type(tmp_path, weight_type, fused):
    source, target = tmp_path / "norm.onnx", tmp_path / "norm.opt.onnx"
    _residual_norm(source, weight_type)
    fuse_file(source, target, ModelInfo(model_type="bert"))
    counts = Counter(node.op_type for node in onnx.load(str(target)).graph.node)
    assert counts["SkipLayerNormalization"] == int(fused) and counts["LayerNormalization"] == int(not fused), dict(counts)
    feed = {name: np.random.default_rng(index).standard_normal((2, 3, 8)).astype(np.float16) for index, name in enumerate("ab")}
    expected = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    actual = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(actual.astype(np.float32), expected.astype(np.float32), atol=2e-2, rtol=0)
