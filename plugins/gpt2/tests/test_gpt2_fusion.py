"""Fusion of both exporters' graphs: every layer's attention with past fused, and still PyTorch's numbers and tokens."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2_cases import EXPORTERS, make_ctx
from tfopt.graph import expected_counts, fuse_file
from tfopt_gpt2.cache import remember, source_model
from tfopt_gpt2.generate import example_prompts, greedy_generate_onnx, greedy_generate_torch
from tfopt_gpt2.hooks import make_dummy_inputs_hook, verify_hook

MODELS = ("tiny-gpt2", "tiny-gpt2-base")
# Exporter x model for sdpa attention, plus eager attention (another mask and scale layout) on one.
VARIANTS = [(m, e, "sdpa") for m in MODELS for e in EXPORTERS] + [("tiny-distilgpt2", "legacy", "eager")]
VARIANT_IDS = ["-".join(v) for v in VARIANTS]


@pytest.fixture(scope="module")
def fused_variant(exported_variant, tmp_path_factory):
    done = {}

    def get(model: str, exporter: str, attn: str = "sdpa"):
        key = (model, exporter, attn)
        if key not in done:
            ctx, exported = exported_variant(*key)
            output = tmp_path_factory.mktemp("fused-" + "-".join(key)) / "optimized.onnx"
            done[key] = (ctx, exported, fuse_file(exported.model_path, output, exported.info, target="cpu"))
        return done[key]

    return get


def _count(op_counts: dict[str, int], key: str) -> int:
    return sum(op_counts.get(op, 0) for op in key.split("|"))


@pytest.mark.parametrize("model, exporter, attn", VARIANTS, ids=VARIANT_IDS)
def test_every_layer_is_fused(fused_variant, model, exporter, attn):
    ctx, exported, fused = fused_variant(model, exporter, attn)
    layers = exported.info.num_layers
    expected = expected_counts(exported.info, layers)
    assert expected and fused.expected == expected
    assert expected["Attention|MultiHeadAttention"] == layers
    for key, want in expected.items():
        assert _count(fused.op_counts, key) == want, (key, fused.op_counts)
    assert not fused.missing
    assert _count(fused.op_counts, "SkipLayerNormalization|EmbedLayerNormalization|LayerNormalization") >= 2 * layers + 1
    assert fused.op_counts.get("FastGelu", 0) == layers
    assert fused.op_counts.get("Softmax", 0) == 0


def test_fusion_keeps_the_decoder_io(fused_variant):
    """Whatever fused, the graph keeps its inputs and outputs: generation code does not change."""
    import onnx

    for exporter in EXPORTERS:
        _, exported, fused = fused_variant("tiny-gpt2", exporter)
        graph = onnx.load(str(fused.model_path)).graph
        assert [i.name for i in graph.input] == list(exported.io.inputs)
        assert [o.name for o in graph.output] == exported.io.outputs


@pytest.mark.parametrize("model, exporter, attn", VARIANTS, ids=VARIANT_IDS)
def test_fused_model_passes_verification(fused_variant, tmp_path, model, exporter, attn):
    variant_ctx, exported, fused = fused_variant(model, exporter, attn)
    assert not fused.missing  # verifying an unfused graph proves nothing about fusion
    ctx = make_ctx(tmp_path, model, exporter=exporter, attn_implementation=attn, verify_cases=60)
    remember(ctx, source_model(variant_ctx))
    result = verify_hook(ctx, exported, fused.model_path, make_dummy_inputs_hook(ctx, exported))
    assert result.passed, result.failures
    assert result.overall.max_abs <= 5e-4 and result.nan_rate == 0
    assert result.top1_agreement in (None, 1.0)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_fused_model_generates_pytorchs_tokens(fused_variant, exporter):
    ctx, _, fused = fused_variant("tiny-gpt2", exporter)
    assert not fused.missing
    source = source_model(ctx)
    input_ids, attention_mask = example_prompts(source, 4, 9, seed=3)
    expected = greedy_generate_torch(source, input_ids, attention_mask, 16)
    np.testing.assert_array_equal(greedy_generate_onnx(fused.model_path, input_ids, attention_mask, 16), expected)
