"""The issue's target: every layer fused on all 16 combinations of family x exporter x attention, with parity.

Per model with L layers: one EmbedLayerNormalization, L attention ops (MultiHeadAttention
for the CPU target, packed Attention for CUDA; both run on ORT's CPU provider), 2L
SkipLayerNormalization, L Gelu-family ops, and nothing of the unfused forms left
(Softmax, LayerNormalization, Erf). Counts alone are not enough: each fused model must also
match PyTorch within 1e-4 on padded inputs of several shapes.
"""

from __future__ import annotations

import numpy as np
import pytest

from bert_pt_cases import FP32_TOLERANCE, TINY_MODELS, VARIANT_IDS, VARIANTS, make_ctx, max_valid_diff
from tfopt.graph import fuse_file
from tfopt_bert_pt.cache import source_model
from tfopt_bert_pt.hooks import make_dummy_inputs_hook, verify_hook
from tfopt_bert_pt.inputs import dummy_inputs

ATTENTION_OP = {"cpu": "MultiHeadAttention", "cuda": "Attention"}
GELU_OPS = ("BiasGelu", "FastGelu", "Gelu")
LEFTOVERS = ("Softmax", "LayerNormalization", "Erf", "Tanh")


def _parity_feeds(source, input_names):
    """Right-padded rows; shapes other than the export's example (2 x 8), up to the position table's limit."""
    return dummy_inputs(
        input_names, vocab_size=source.vocab_size, pad_token_id=source.pad_token_id,
        batch_sizes=(1, 3), sequence_lengths=(7, 16, source.max_sequence_length),
    )


@pytest.mark.parametrize("target", ["cpu", "cuda"])
@pytest.mark.parametrize(("model", "exporter", "attn"), VARIANTS, ids=VARIANT_IDS)
def test_every_layer_fused_with_parity(exported_variant, tmp_path, model, exporter, attn, target):
    ctx, exported = exported_variant(model, exporter, attn)
    layers = exported.info.num_layers
    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info, target=target)
    counts = fused.op_counts

    assert counts.get("EmbedLayerNormalization", 0) == 1
    assert counts.get(ATTENTION_OP[target], 0) == layers
    assert counts.get("SkipLayerNormalization", 0) == 2 * layers
    assert sum(counts.get(op, 0) for op in GELU_OPS) == layers
    assert {op: counts[op] for op in LEFTOVERS if op in counts} == {}
    assert fused.missing == []

    source = source_model(ctx)
    assert max_valid_diff(source, fused.model_path, _parity_feeds(source, exported.io.inputs)) <= FP32_TOLERANCE


@pytest.mark.parametrize("model", TINY_MODELS)
def test_input_int32_fused_model_takes_int32_and_matches(exported_variant, tmp_path, model):
    ctx, exported = exported_variant(model, "dynamo", "sdpa")
    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info, input_int32=True)
    assert fused.missing == []
    int32_ctx = make_ctx(tmp_path, model, input_int32=True, batch_sizes=[1, 3], sequence_lengths=[7, 16])
    inputs = make_dummy_inputs_hook(int32_ctx, exported)
    assert all(value.dtype == np.int32 for feed in inputs for value in feed.values())
    result = verify_hook(ctx, exported, fused.model_path, inputs)
    assert result.passed, result.overall
