"""Every layer fuses when the embedding tables exceed the mask probe's constant budget.

The legacy (TorchScript) exporter with ``sdpa`` builds the additive mask once, from
``Shape`` of the embeddings' output, and every layer adds it. The attention rule proves a
mask is key padding by running its subgraph, which stops at values whose shape the match
knows. At bert-base size (a 90 MB word-embedding table, over the probe's 64 MB budget)
only the first layer's cone stopped at the embeddings: the others walked back into the
tables, were refused, and 11 of 12 attentions stayed unfused. The tiny export is the same
graph; scaling the budget below its table reproduces the condition in a second.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from bert_pt_cases import FP32_TOLERANCE
from tfopt.bench import ort_session
from tfopt.graph import fuse_file
from tfopt.graph.rules import causal_mask
from tfopt_bert_pt.cache import source_model
from tfopt_bert_pt.inputs import dummy_inputs


def _largest_initializer_bytes(path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return max(int(np.prod(t.dims)) * 4 for t in model.graph.initializer)


def _max_diff_vs_input(original_path, fused_path, feeds) -> float:
    """Worst |fused - unfused| under ONNX Runtime over unpadded positions (padded queries are read by no one)."""
    reference, fused = ort_session(original_path), ort_session(fused_path)
    worst = 0.0
    for feed in feeds:
        (expected,) = reference.run(None, {i.name: feed[i.name] for i in reference.get_inputs()})
        (actual,) = fused.run(None, {i.name: feed[i.name] for i in fused.get_inputs()})
        valid = feed["attention_mask"].astype(bool)
        assert actual.shape == expected.shape and np.isfinite(actual[valid]).all()
        worst = max(worst, float(np.abs(actual - expected)[valid].max()))
    return worst


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_all_layers_fuse_when_embedding_tables_exceed_the_probe_budget(exported_variant, tmp_path, monkeypatch, target):
    ctx, exported = exported_variant("tiny-bert", "legacy", "sdpa")
    layers = exported.info.num_layers
    assert layers >= 2  # the first layer's cone always stopped at the embeddings
    table = _largest_initializer_bytes(exported.model_path)  # the word embeddings
    monkeypatch.setattr(causal_mask, "MAX_CONSTANT_BYTES", table // 2)

    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info, target=target)
    op = {"cpu": "MultiHeadAttention", "cuda": "Attention"}[target]
    assert fused.op_counts.get(op, 0) == layers
    assert fused.op_counts.get("Softmax", 0) == 0
    assert fused.missing == [] and fused.dropped_rules == []

    source = source_model(ctx)
    feeds = dummy_inputs(
        exported.io.inputs, vocab_size=source.vocab_size, pad_token_id=source.pad_token_id,
        batch_sizes=(1, 3), sequence_lengths=(5, 16),
    )
    assert any(not feed["attention_mask"].all() for feed in feeds)  # padded rows are checked
    assert _max_diff_vs_input(exported.model_path, fused.model_path, feeds) <= FP32_TOLERANCE
