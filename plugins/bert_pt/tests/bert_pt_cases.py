"""Constants and helpers the bert_pt test files share (a unique module name: pytest puts this dir on sys.path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tfopt.bench import ort_session
from tfopt.results import RunContext

BERT_LAYOUT_MODELS = ("tiny-bert", "tiny-distilbert", "tiny-roberta", "tiny-albert")
MORE_MODELS = ("tiny-electra", "tiny-xlm-roberta", "tiny-mpnet", "tiny-deberta-v2", "tiny-deberta-v3", "tiny-modernbert")
TINY_MODELS = BERT_LAYOUT_MODELS + MORE_MODELS
EXPORTERS = ("dynamo", "legacy")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
EAGER_ONLY = ("tiny-mpnet", "tiny-deberta-v2", "tiny-deberta-v3")  # transformers has no sdpa for MPNet, DeBERTa-v2
FP32_TOLERANCE = 1e-4

# What the fused graph of each tiny model holds beyond the host's table (tfopt.graph.expected_counts),
# measured on both exporters and both attentions. The attention op per target: the BERT layout's
# mask is proven a key-padding mask (MultiHeadAttention on CPU, packed Attention for CUDA); MPNet's
# relative position bias, DeBERTa-v3's disentangled terms and ModernBERT's sliding window are
# additive masks, kept as ONNX Attention's attn_mask on both targets.
_KEY_PADDING = {"cpu": "MultiHeadAttention", "cuda": "Attention"}
_ADDITIVE = {"cpu": "Attention", "cuda": "Attention"}
ATTENTION_OP = {model: _KEY_PADDING for model in TINY_MODELS} | {
    "tiny-mpnet": _ADDITIVE, "tiny-deberta-v3": _ADDITIVE, "tiny-modernbert": _ADDITIVE,
}
# One EmbedLayerNormalization where the word lookup has a position (or segment) lookup added
# before its LayerNorm; DeBERTa-v3 (relative positions only) and ModernBERT (rotary) have none.
EMBED_LAYER_NORMS = {model: 1 for model in TINY_MODELS} | {"tiny-deberta-v3": 0, "tiny-modernbert": 0}
# LayerNormalizations with no residual to fuse: DeBERTa-v3's embedding norm and its relative
# position table's norm (norm_rel_ebd); ModernBERT's embedding norm.
LAYER_NORMS_LEFT = {model: 0 for model in TINY_MODELS} | {"tiny-deberta-v3": 2, "tiny-modernbert": 1}


def attentions(model: str) -> tuple[str, ...]:
    return ("eager",) if model in EAGER_ONLY else ATTN_IMPLEMENTATIONS


def _variant(model: str, exporter: str, attn: str):
    # The BERT-layout four run all 16 variants in CI; the newer families run their default
    # attention on both exporters in CI, their other attention under -m slow.
    slow = model in MORE_MODELS and attn != attentions(model)[0]
    return pytest.param(model, exporter, attn, id=f"{model}-{exporter}-{attn}", marks=[pytest.mark.slow] if slow else [])


VARIANTS = [_variant(model, exporter, attn) for model in TINY_MODELS for exporter in EXPORTERS for attn in attentions(model)]


def make_ctx(work_dir, source, **options) -> RunContext:
    return RunContext(family="bert_pt", source=source, work_dir=work_dir, options=options)


def max_valid_diff(source_model, model_path, feeds) -> float:
    """Worst |ORT - torch| over the valid (unpadded) positions of every feed."""
    session = ort_session(model_path)
    worst = 0.0
    for feed in feeds:
        tensors = {name: torch.from_numpy(value.astype(np.int64)) for name, value in feed.items()}
        with torch.inference_mode():
            expected = source_model.model(**tensors).last_hidden_state.numpy()
        ort_feed = {i.name: feed[i.name].astype(np.int32 if i.type == "tensor(int32)" else np.int64) for i in session.get_inputs()}
        (actual,) = session.run(None, ort_feed)
        assert actual.shape == expected.shape
        valid = feed["attention_mask"].astype(bool)
        assert np.isfinite(actual[valid]).all()
        worst = max(worst, float(np.abs(actual - expected)[valid].max()))
    return worst
