"""Encoders whose attention scores get an additive term the encoder rule does not take -> ONNX ``Attention``.

MPNet adds a relative position bias and the padding mask; T5's encoder adds its bucketed
relative position bias (with the mask folded in) to unscaled scores and normalizes with RMSNorm.
No rule proves what those terms are: the graph's own sum is passed as ``attn_mask``, so the fused
model computes what the graph computes. Counts and parity with torch on padded batches.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tfopt.graph import fuse_file
from tfopt.results import ModelInfo

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
    from tfopt.torch_kit import quiet_export

    build, exporter, expected = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    ids, mask = torch.randint(0, 100, (2, 7)), torch.ones(2, 7, dtype=torch.int64)
    path = tmp_path / "model.onnx"
    names = dict(input_names=["input_ids", "attention_mask"], output_names=["out"])
    with quiet_export():
        if exporter == "dynamo":
            dynamic = torch.export.Dim.DYNAMIC
            torch.onnx.export(model, (ids, mask), str(path), dynamo=True, dynamic_shapes=({0: dynamic, 1: dynamic},) * 2, **names)
        else:
            axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
            torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17, dynamic_axes=axes, **names)
    result = fuse_file(path, tmp_path / "model.opt.onnx", ModelInfo(model_type="custom"))
    assert {op: result.op_counts.get(op, 0) for op in expected} == expected, result.op_counts
    assert "Softmax" not in result.op_counts and result.validation.passed
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    for batch, sequence in [(1, 5), (3, 9)]:
        ids = torch.randint(0, 100, (batch, sequence))
        mask = torch.ones(batch, sequence, dtype=torch.int64)
        mask[-1, sequence - 3:] = 0  # the last row padded
        with torch.no_grad():
            expected_out = model(ids, mask)[0].numpy()
        actual = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        real = mask.numpy().astype(bool)
        np.testing.assert_allclose(actual[real], expected_out[real], atol=1e-5, rtol=0)
