"""Encoders whose attention scores get an additive term the encoder rule does not take -> ONNX ``Attention``.

MPNet adds a relative position bias and the padding mask; T5's encoder adds its bucketed
relative position bias (with the mask folded in) to unscaled scores and normalizes with RMSNorm.
No rule proves what those terms are: the graph's own sum is passed as ``attn_mask``, so the fused
model computes what the graph computes. Counts and parity with torch on padded batches.
"""

from __future__ import annotations

import pytest

from tfopt.graph import fuse_file
from tfopt.results import ModelInfo

from tfopt_host_models import assert_text_encoder_matches_torch, export_text_encoder, perturbed, text_encoder

torch = pytest.importorskip("torch")  # the TensorFlow deployment has none
transformers = pytest.importorskip("transformers")


def _mpnet():
    config = transformers.MPNetConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return transformers.MPNetModel(config)


def _t5_encoder():
    config = transformers.T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
    return transformers.T5EncoderModel(config)


CASES = {  # name -> (model, exporter, expected fused counts)
    "mpnet-dynamo": (_mpnet, "dynamo", {"Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2}),
    "mpnet-legacy": (_mpnet, "legacy", {"Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2}),
    # torch 2.13's dynamo exporter cannot export T5's attention (a view of a non-contiguous tensor)
    "t5-encoder-legacy": (_t5_encoder, "legacy", {"Attention": 2, "SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 4}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_with_an_additive_bias_fuses_and_matches_torch(tmp_path, case):
    build, exporter, expected = CASES[case]
    torch.manual_seed(0)
    model = text_encoder(perturbed(build()))
    path = export_text_encoder(model, tmp_path / "model.onnx", exporter)
    result = fuse_file(path, tmp_path / "model.opt.onnx", ModelInfo(model_type="custom"))
    assert {op: result.op_counts.get(op, 0) for op in expected} == expected, result.op_counts
    assert "Softmax" not in result.op_counts and result.leftover == {} and result.validation.passed
    assert_text_encoder_matches_torch(model, result.model_path)
