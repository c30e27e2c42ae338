"""The issue's target: every layer fused on every family x exporter x attention, with parity.

Per model with L layers: exactly the host's table of counts for its model type
(tfopt.graph.expected_counts; BERT's layout: one EmbedLayerNormalization, L attention ops,
2L SkipLayerNormalization, L Gelu-family ops; DeBERTa: no EmbedLayerNormalization;
ModernBERT: 2L RotaryEmbedding too), L of the family's attention op for the target
(MultiHeadAttention on CPU and packed Attention for CUDA where the mask is a key-padding mask;
ONNX Attention with an additive mask for MPNet, DeBERTa-v3 and ModernBERT; all run on ORT's
CPU provider), and nothing of the unfused forms left (Softmax, Erf, Tanh; LayerNormalization
only where no residual precedes it). Counts alone are not enough: each fused model must also
match PyTorch within 1e-4 on padded inputs of several shapes.

The BERT-layout four run all 16 variants in CI; ELECTRA, XLM-RoBERTa, MPNet, DeBERTa-v2/v3
and ModernBERT run their default attention on both exporters (``-m slow``: the other one).
"""

from __future__ import annotations

import numpy as np
import pytest

from bert_pt_cases import (
    ATTENTION_OP, EMBED_LAYER_NORMS, FP32_TOLERANCE, LAYER_NORMS_LEFT, TINY_MODELS, VARIANTS, attentions, make_ctx, max_valid_diff,
)
from tfopt.graph import expected_counts, fuse_file
from tfopt_bert_pt.cache import source_model
from tfopt_bert_pt.hooks import make_dummy_inputs_hook, verify_hook
from tfopt_bert_pt.inputs import dummy_inputs

LEFTOVERS = ("Softmax", "Erf", "Tanh")


def _parity_feeds(source, input_names):
    """Right-padded rows; shapes other than the export's example (2 x 8), up to the position table's limit."""
    return dummy_inputs(
        input_names, vocab_size=source.vocab_size, pad_token_id=source.pad_token_id,
        batch_sizes=(1, 3), sequence_lengths=(7, 16, source.max_sequence_length),
    )


@pytest.mark.parametrize("target", ["cpu", "cuda"])
@pytest.mark.parametrize(("model", "exporter", "attn"), VARIANTS)
def test_every_layer_fused_with_parity(exported_variant, tmp_path, model, exporter, attn, target):
    ctx, exported = exported_variant(model, exporter, attn)
    layers = exported.info.num_layers
    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info, target=target)
    counts = fused.op_counts

    table = expected_counts(exported.info, layers)  # the host's counts for the model type, not the adapter's
    assert table and {key: sum(counts.get(op, 0) for op in key.split("|")) for key in table} == table
    assert counts.get(ATTENTION_OP[model][target], 0) == layers
    assert counts.get("EmbedLayerNormalization", 0) == EMBED_LAYER_NORMS[model]
    assert counts.get("LayerNormalization", 0) == LAYER_NORMS_LEFT[model]
    assert {op: counts[op] for op in LEFTOVERS if op in counts} == {}
    assert fused.missing == [] and fused.leftover == {}

    source = source_model(ctx)
    assert max_valid_diff(source, fused.model_path, _parity_feeds(source, exported.io.inputs)) <= FP32_TOLERANCE


@pytest.mark.parametrize("model", TINY_MODELS)
def test_input_int32_fused_model_takes_int32_and_matches(exported_variant, tmp_path, model):
    ctx, exported = exported_variant(model, "dynamo", attentions(model)[0])
    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info, input_int32=True)
    assert fused.missing == []
    int32_ctx = make_ctx(tmp_path, model, input_int32=True, batch_sizes=[1, 3], sequence_lengths=[7, 16])
    inputs = make_dummy_inputs_hook(int32_ctx, exported)
    assert all(value.dtype == np.int32 for feed in inputs for value in feed.values())
    result = verify_hook(ctx, exported, fused.model_path, inputs)
    assert result.passed, result.overall
