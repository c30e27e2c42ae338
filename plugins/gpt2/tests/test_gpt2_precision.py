"""The host's fp16 and int8 conversions of the fused GPT-2, judged by this adapter's verify (ORT's parity rules)."""

from __future__ import annotations

import pytest

from gpt2_cases import make_ctx
from tfopt.graph import fuse_file
from tfopt.precision import convert
from tfopt_gpt2.cache import remember, source_model
from tfopt_gpt2.hooks import make_dummy_inputs_hook, verify_hook


@pytest.mark.parametrize("precision, tolerance", [("fp16", 0.2), ("int8", 3.0)])
def test_converted_model_passes_its_precisions_rules(exported_variant, tmp_path, precision, tolerance):
    variant_ctx, exported = exported_variant("tiny-gpt2", "legacy")
    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info)
    converted = convert(fused.model_path, precision)
    ctx = make_ctx(tmp_path, "tiny-gpt2", precision=precision, verify_cases=40)
    remember(ctx, source_model(variant_ctx))
    result = verify_hook(ctx, exported, converted.model_path, make_dummy_inputs_hook(ctx, exported))
    assert result.passed, result.failures
    assert result.tolerance == tolerance and result.nan_rate == 0 and result.top1_agreement >= 0.95
    assert result.overall.max_abs > 1e-4  # really converted: fp32 would be ~1e-6 off
    strict = make_ctx(tmp_path, "tiny-gpt2", precision="fp32", verify_cases=0)  # the same model fails fp32's rules
    remember(strict, source_model(variant_ctx))
    assert not verify_hook(strict, exported, converted.model_path, make_dummy_inputs_hook(ctx, exported)).passed
