"""DeBERTa-v2/v3 attention (heads folded into the batch, a query x key select mask, v3's c2p + p2c terms) fuses.

DeBERTa computes attention with 3-D batched MatMuls over [B*N, S, D] and masks the scores with
``Where(Not(keep), min, s)``. ``rules/head_folded.py`` unfolds the products to 4-D and writes the
select as an additive mask; the shared rules then fuse every layer: DeBERTa-v2 (no relative
attention) through the encoder rule (the mask is proven key padding for every real query) into
``MultiHeadAttention``, DeBERTa-v3 (relative attention) through ``AdditiveMaskAttention`` into
ONNX ``Attention`` with the disentangled terms and the mask as ``attn_mask``. Counts, no
primitive left, and parity with torch on padded batches at two shapes, for both exporters.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tfopt.graph import fuse_file
from tfopt.results import ModelInfo

from tfopt_host_models import assert_text_encoder_matches_torch, export_text_encoder, perturbed, text_encoder

torch = pytest.importorskip("torch")  # the TensorFlow deployment has none
transformers = pytest.importorskip("transformers")

_SIZES = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
_V3 = dict(
    relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=-1,
    position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
)
_COMMON = {"SkipLayerNormalization": 4, "BiasGelu": 2, "Softmax": 0}
EXPECTED = {
    # v2: absolute positions, plain attention: the encoder rule takes it (embeddings fuse too)
    "v2": {"MultiHeadAttention": 2, "EmbedLayerNormalization": 1, **_COMMON},
    # v3: the embeddings' and the relative embeddings' LayerNorms stay plain LayerNormalization ops
    "v3": {"Attention": 2, "LayerNormalization": 2, **_COMMON},
}


def _deberta(version: str):
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(**_SIZES, **(_V3 if version == "v3" else {}))
    return text_encoder(perturbed(transformers.DebertaV2Model(config)))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_deberta_attention_fuses_every_layer_and_matches_torch(tmp_path, version, exporter):
    model = _deberta(version)
    path = export_text_encoder(model, tmp_path / "model.onnx", exporter)
    result = fuse_file(path, tmp_path / "model.opt.onnx", ModelInfo(model_type="custom"))
    expected = EXPECTED[version]
    assert {op: result.op_counts.get(op, 0) for op in expected} == expected, result.op_counts
    assert result.leftover == {} and result.validation.passed, (result.leftover, result.validation)
    rules = result.rule_counts
    assert rules["FoldedScores"] == 2 and rules["FoldedContext"] == 2 and rules["SelectedScores[fill first]"] == 2, rules
    assert_text_encoder_matches_torch(model, result.model_path, shapes=((1, 5), (3, 11)))


# --- The rules on hand-built graphs: any head-folded attention, not DeBERTa's alone ------------------------------

B, N, S, D = 2, 4, 5, 8


def _folded_attention(key_form: str, bias_shape: tuple | None, unfold_heads: int = N, mask_batch: int = B):
    """Q, K, V [B, N, S, D] inputs; the scores and context computed over [B*N, ...] and unfolded with ``unfold_heads``."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [
        const("fold", np.array([-1, S, D], np.int64)), const("fold_t", np.array([-1, D, S], np.int64)),
        const("unfold", np.array([-1, unfold_heads, S, S], np.int64)), const("unfold_ctx", np.array([-1, N, S, D], np.int64)),
        const("fold_p", np.array([-1, S, S], np.int64)), const("scale", np.array(np.sqrt(D), np.float32)),
        const("fill", np.array(np.finfo(np.float32).min, np.float32)),
    ]
    nodes = [helper.make_node("Reshape", ["q", "fold"], ["q3"])]
    if key_form == "fold_then_transpose":
        nodes += [helper.make_node("Reshape", ["k", "fold"], ["k3"]), helper.make_node("Transpose", ["k3"], ["kt3"], perm=[0, 2, 1])]
    else:
        nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), helper.make_node("Reshape", ["kt", "fold_t"], ["kt3"])]
    nodes += [helper.make_node("Div", ["kt3", "scale"], ["kts"]), helper.make_node("MatMul", ["q3", "kts"], ["s3"])]
    scores = "s3"
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [B, N, S, D]) for name in ("q", "k", "v")]
    inputs.append(helper.make_tensor_value_info("keep", TensorProto.BOOL, [mask_batch, 1, S, S]))
    if bias_shape is not None:
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, list(bias_shape)))
        nodes.append(helper.make_node("Add", ["s3", "bias"], ["s3b"]))
        scores = "s3b"
    nodes += [
        helper.make_node("Reshape", [scores, "unfold"], ["s4"]),
        helper.make_node("Not", ["keep"], ["drop"]),
        helper.make_node("Where", ["drop", "fill", "s4"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("Reshape", ["p", "fold_p"], ["p3"]),
        helper.make_node("Reshape", ["v", "fold"], ["v3"]),
        helper.make_node("MatMul", ["p3", "v3"], ["c3"]),
        helper.make_node("Reshape", ["c3", "unfold_ctx"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "folded", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _feeds(proto, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in proto.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == 9:  # bool: keys 3.. of the last batch row masked (a padded row)
            keep = np.ones(shape, bool)
            keep[-1, ..., 3:] = False
            keep[-1, :, 3:, :] = False
            feeds[value.name] = keep
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("bias_shape", [None, (B * N, S, S), (1, S, S)], ids=["no-bias", "bias", "broadcast-bias"])
@pytest.mark.parametrize("key_form", ["fold_then_transpose", "transpose_then_fold"])
def test_head_folded_attention_unfolds_and_fuses(key_form, bias_shape):
    import onnx_ir as ir
    from tfopt.graph import fuse_model

    proto = _folded_attention(key_form, bias_shape)
    model = ir.serde.deserialize_model(proto)
    stats = fuse_model(model, ModelInfo(model_type="custom", num_layers=1))
    assert stats.rule_counts["FoldedScores"] == 1 and stats.rule_counts["FoldedContext"] == 1, stats.rule_counts
    assert stats.op_counts.get("Attention") == 1 and "Softmax" not in stats.op_counts, stats.op_counts
    feeds = _feeds(proto)
    real = np.ones((B, N, S, D), bool)
    real[-1, :, 3:, :] = False  # padded queries: every key masked, no defined result
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    actual = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(actual[real], expected[real], atol=1e-5, rtol=0)


def test_scores_unfolded_into_other_heads_are_left_alone():
    """[B*N, S, S] re-split into N/2 heads pairs each query head with another batch row's mask: not a 4-D product."""
    import onnx_ir as ir
    from tfopt.graph import fuse_model

    proto = _folded_attention("fold_then_transpose", None, unfold_heads=N // 2, mask_batch=1)
    model = ir.serde.deserialize_model(proto)
    stats = fuse_model(model, ModelInfo(model_type="custom", num_layers=1))
    assert stats.rule_counts["FoldedScores"] == 0 and stats.op_counts.get("Softmax") == 1, stats
    feeds = _feeds(proto)
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    actual = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(actual, expected)
