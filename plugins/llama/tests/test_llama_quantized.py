"""int8 / int4 judged where it means something: a Llama trained here on the stdlib's docstrings.

``stdlib-llama-tiny`` (2 layers, hidden 64, 4 query over 2 key/value heads; trained in ~15 s,
cached in a fresh directory per test session) through the whole pipeline at each precision:
fused, quantized by the adapter's hook (weight-only MatMulNBits, GPTQ rounding calibrated on
training text), verified against torch, then compared with the fp32 model on held-out text.
Bounds are this model's measured figures with a margin (int8 99.7%, int4 97.1% top-1; the
issue's targets on the larger ``stdlib-llama`` are 99% / 95%: docs/llama.md).
"""

from __future__ import annotations

import os

import pytest

from tfopt.bench import ort_session
from tfopt.graph import fuse_file
from tfopt.results import RunContext


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.mktemp("text-cache")
    previous = os.environ.get("TFOPT_CACHE_DIR")
    os.environ["TFOPT_CACHE_DIR"] = str(cache)
    from tfopt_llama.export import export_source

    work = tmp_path_factory.mktemp("stdlib-llama-tiny")
    ctx = RunContext(family="llama", source="stdlib-llama-tiny", work_dir=work)
    exported = export_source(ctx)
    fused = fuse_file(exported.model_path, work / "optimized.onnx", exported.info)
    yield ctx, fused
    if previous is None:
        os.environ.pop("TFOPT_CACHE_DIR", None)
    else:
        os.environ["TFOPT_CACHE_DIR"] = previous


@pytest.mark.parametrize("precision, min_top1", [("int8", 0.99), ("int4", 0.95)])
def test_quantized_trained_llama_agrees_with_fp32_on_held_out_text(trained, precision, min_top1):
    from tfopt.text_quality import compare
    from tfopt.textmodel import heldout_bytes
    from tfopt_llama.hooks import convert_precision_hook

    ctx, fused = trained
    assert fused.missing == [] and fused.rule_counts.get("PackedProjections") == 6  # 2 layers x (QKV 3->1, gate/up 2->1)
    ctx.options = {"precision": precision}
    converted = convert_precision_hook(ctx, fused)
    assert any("GPTQ" in note for note in converted.notes), converted.notes
    assert converted.validation is not None and converted.validation.passed
    quality = compare(ort_session(fused.model_path), ort_session(converted.model_path), heldout_bytes(), window_length=120)
    assert quality.top1_agreement >= min_top1, quality
    assert abs(quality.perplexity_change) < 0.02, quality


def test_trained_llama_runs_through_verify_at_int4(trained):
    """The adapter's own verify: next-token agreement with torch on its left-padded steps."""
    from tfopt_llama.hooks import convert_precision_hook, make_dummy_inputs_hook, verify_hook

    ctx, fused = trained
    ctx.options = {"precision": "int4"}
    converted = convert_precision_hook(ctx, fused)
    result = verify_hook(ctx, None, converted.model_path, make_dummy_inputs_hook(ctx, None))
    assert result.passed, (result.failure, result.top1_agreement)


@pytest.mark.slow  # trains stdlib-llama once (a few minutes; cached under ~/.cache/tfopt), then 2 conversions
@pytest.mark.parametrize("block, min_top1", [(32, 0.96), (128, 0.95)])
def test_stdlib_llama_int4_meets_the_agreement_target_at_both_block_sizes(tmp_path, block, min_top1):
    """The issue's int4 bar (95% top-1 on the real-structure model) at blocks of 32 (the default) and of 128
    (fewer scales, faster: docs/benchmark-llama.md); GPTQ-rounded, as the trained models are. Measured
    97.0% and 95.4% (rounded to nearest instead: 94.1% and 93.3%, docs/llama.md)."""
    from tfopt.text_quality import compare
    from tfopt.textmodel import heldout_bytes
    from tfopt_llama.export import export_source
    from tfopt_llama.hooks import convert_precision_hook

    ctx = RunContext(family="llama", source="stdlib-llama", work_dir=tmp_path)
    exported = export_source(ctx)
    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info)
    ctx.options = {"precision": "int4", "int4_block_size": block}
    converted = convert_precision_hook(ctx, fused)
    assert any("GPTQ" in note for note in converted.notes) and any(f"blocks of {block}" in note for note in converted.notes)
    quality = compare(ort_session(fused.model_path), ort_session(converted.model_path), heldout_bytes(), window_length=120)
    assert quality.top1_agreement >= min_top1, quality
