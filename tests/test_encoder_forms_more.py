"""Encoder forms the rules used to miss on tiny ModernBERT and BART encoders: counts and parity with torch.

- ModernBERT computes its rotary cos/sin from ``arange(S).unsqueeze(0)`` (batch 1), which
  ONNX Runtime's ``RotaryEmbedding`` does not broadcast: the half tables are expanded to x's
  batch. Its ``norm_bias=False`` LayerNorms have no bias input in the dynamo export
  (``LayerNormalization(x, scale)``): ``SkipLayerNormalization`` takes them without beta.
- BART's word lookup is ``Gather(table, ids) * embed_scale`` with ``embed_scale`` 1.0, left as
  a Mul by the legacy exporter, and a second reader (``Shape(embeds[:, :, -1])``) sizes the
  position ids: ``prepare`` drops the exact unit factor and reads the shape off the ids, so
  ``EmbedLayerNormalization`` matches.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from tfopt.graph import fuse_file
from tfopt.graph.passes import drop_unit_factors
from tfopt.results import ModelInfo

from tfopt_host_models import assert_text_encoder_matches_torch, export_text_encoder, perturbed, text_encoder

torch = pytest.importorskip("torch")  # the TensorFlow deployment has none
transformers = pytest.importorskip("transformers")


def _modernbert():
    config = transformers.ModernBertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
    )
    return transformers.ModernBertModel(config)


def _bart_encoder():
    config = transformers.BartConfig(
        vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64,
    )
    return transformers.BartModel(config).get_encoder()


# ModernBERT: no position table (no EmbedLayerNorm: its embedding norm stays a LayerNormalization),
# layer 0 has no attention norm: the residual norms are layer 0's MLP norm, layer 1's two and the final norm.
_MODERNBERT = {"Attention": 2, "RotaryEmbedding": 4, "SkipLayerNormalization": 4, "LayerNormalization": 1, "Gelu": 2}
_BART = {"EmbedLayerNormalization": 1, "MultiHeadAttention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2}

CASES = {  # name -> (model, exporter, expected fused counts)
    "modernbert-dynamo": (_modernbert, "dynamo", _MODERNBERT),
    "modernbert-legacy": (_modernbert, "legacy", _MODERNBERT),
    "bart-encoder-dynamo": (_bart_encoder, "dynamo", _BART),
    "bart-encoder-legacy": (_bart_encoder, "legacy", _BART),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_encoder_fuses_fully_and_matches_torch(tmp_path, case):
    build, exporter, expected = CASES[case]
    torch.manual_seed(0)
    model = text_encoder(perturbed(build()))
    path = export_text_encoder(model, tmp_path / "model.onnx", exporter)
    result = fuse_file(path, tmp_path / "model.opt.onnx", ModelInfo(model_type="custom"))
    assert {op: result.op_counts.get(op, 0) for op in expected} == expected, result.op_counts
    assert result.leftover == {} and not result.dropped_rules, (result.leftover, result.dropped_rules)
    assert "Softmax" not in result.op_counts and "Neg" not in result.op_counts and result.validation.passed
    assert_text_encoder_matches_torch(model, result.model_path)


def _product(op_type: str, x_shape, factor: np.ndarray, factor_first: bool = False) -> ir.Graph:
    x = ir.Value(name="x", shape=None if x_shape is None else ir.Shape(x_shape), type=ir.TensorType(ir.DataType.FLOAT))
    constant = ir.Value(name="c", shape=ir.Shape(factor.shape), type=ir.TensorType(ir.DataType.from_numpy(factor.dtype)),
                        const_value=ir.tensor(factor))
    node = ir.node(op_type, [constant, x] if factor_first else [x, constant])
    follow = ir.node("Relu", [node.outputs[0]])
    follow.outputs[0].name = "y"
    return ir.Graph([x], [follow.outputs[0]], nodes=[node, follow], initializers=[constant], opset_imports={"": 17})


@pytest.mark.parametrize(
    "op_type, x_shape, factor, factor_first, dropped",
    [
        ("Mul", ["b", 4], np.array(1.0, np.float32), False, True),
        ("Mul", ["b", 4], np.array(1.0, np.float32), True, True),  # 1 * x
        ("Div", ["b", 4], np.array([[1.0]], np.float32), False, True),  # all-1 dims, no wider than x
        ("Div", ["b", 4], np.array(1.0, np.float32), True, False),  # 1 / x is not x
        ("Mul", [4], np.array([[1.0]], np.float32), False, False),  # [1, 1] would widen a rank-1 x
        ("Mul", None, np.array([1.0], np.float32), False, False),  # x's rank unknown: [1] might widen it
        ("Mul", ["b", 4], np.array(1.0000001, np.float32), False, False),  # not exactly one
        ("Mul", ["b", 4], np.array(1.0, np.float64), False, False),  # another type
    ],
)
def test_unit_factors_are_dropped_only_where_exact(op_type, x_shape, factor, factor_first, dropped):
    graph = _product(op_type, x_shape, factor, factor_first)
    assert drop_unit_factors(graph) == int(dropped)
    relu = graph.outputs[0].producer()
    assert (relu.inputs[0] is graph.inputs[0]) == dropped


@pytest.mark.parametrize("with_bias", [False, True])
def test_skip_layer_norm_takes_a_layer_norm_without_beta(with_bias):
    """LayerNormalization(a [+ bias] + b, gamma) with no beta -> SkipLayerNormalization without beta (bias kept)."""
    import onnx
    from onnx import helper
    from onnxscript.rewriter.pattern import RewriteRuleSet

    from tfopt.graph.rules.normalization import skip_layer_norm_rules

    rng = np.random.default_rng(0)
    width = 8
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "gamma"),
        onnx.numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "bias"),
    ]
    nodes = [helper.make_node("Add", ["a", "bias"], ["a_biased"])] if with_bias else []
    nodes += [
        helper.make_node("Add", ["a_biased" if with_bias else "a", "b"], ["total"]),
        helper.make_node("LayerNormalization", ["total", "gamma"], ["y"], axis=-1, epsilon=1e-5),
    ]
    inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", "sequence", width]) for name in "ab"]
    output = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "sequence", width])
    proto = helper.make_model(helper.make_graph(nodes, "g", inputs, [output], inits), opset_imports=[helper.make_opsetid("", 17)])
    model = ir.from_proto(proto)
    assert RewriteRuleSet(skip_layer_norm_rules()).apply_to_model(model) == 1
    fused = [node for node in model.graph if node.op_type == "SkipLayerNormalization"]
    assert len(fused) == 1 and [node.op_type for node in model.graph] == ["SkipLayerNormalization"]
    assert fused[0].inputs[3] is None if with_bias else len(fused[0].inputs) == 3
    model.opset_imports["com.microsoft"] = 1
    feeds = {name: rng.standard_normal((2, 3, width)).astype(np.float32) for name in "ab"}
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    actual = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
