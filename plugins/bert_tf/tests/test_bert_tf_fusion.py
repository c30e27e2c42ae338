"""Fusion of tf2onnx's BERT graph: every layer fused, and still matching TF."""

from __future__ import annotations

import pytest

import tfopt_bert_tf
from tfopt.graph import expected_counts, fuse_file


@pytest.mark.parametrize("run_name", ["savedmodel_run", "hf_dir_run"])
def test_every_layer_fused_and_parity_kept(run_name, request, tmp_path):
    ctx, exported = request.getfixturevalue(run_name)
    fused = fuse_file(exported.model_path, tmp_path / "fused.onnx", exported.info)
    expected = expected_counts(exported.info, exported.info.num_layers)
    # 2 layers: one embedding, 2 attentions, 2 SkipLayerNorms and one gelu per layer (whatever gelu ops the key names)
    gelu_key = next(key for key in expected if "Gelu" in key)
    assert expected == {"EmbedLayerNormalization": 1, "Attention|MultiHeadAttention": 2, "SkipLayerNormalization": 4, gelu_key: 2}
    found = {key: sum(fused.op_counts.get(op, 0) for op in key.split("|")) for key in expected}
    assert found == expected, fused.missing
    assert fused.missing == []
    result = tfopt_bert_tf.verify_hook(ctx, exported, fused.model_path, tfopt_bert_tf.make_dummy_inputs_hook(ctx, exported))
    assert result.passed, result.overall
