"""The default source, end to end: the real all-MiniLM-L6-v2 (trained weights, 6 layers, hidden 384)."""

from __future__ import annotations

import pytest

from bert_pt_cases import make_ctx
from tfopt.graph import fuse_file
from tfopt_bert_pt.hooks import export_hook, make_dummy_inputs_hook, verify_hook


def _export_fuse_verify(tmp_path, exporter, **options):
    ctx = make_ctx(tmp_path, None, exporter=exporter, **options)
    exported = export_hook(ctx)
    assert exported.info.num_layers == 6 and list(exported.io.inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info)
    assert fused.missing == [] and fused.op_counts["MultiHeadAttention"] == 6
    inputs = make_dummy_inputs_hook(ctx, exported)
    for model_path in (exported.model_path, fused.model_path):
        result = verify_hook(ctx, exported, model_path, inputs)
        assert result.passed and result.overall.max_abs <= 1e-4, (model_path.name, result.overall)


def test_real_weights_legacy_export_fuses_and_verifies(tmp_path):
    _export_fuse_verify(tmp_path, "legacy", batch_sizes=[1, 3], sequence_lengths=[8, 40])


@pytest.mark.slow
def test_real_weights_dynamo_export_fuses_and_verifies_on_the_default_grid(tmp_path):
    _export_fuse_verify(tmp_path, "dynamo")
