"""verify: ORT's parity-tool rules against PyTorch, on logits and present alike."""

from __future__ import annotations

import pytest

from gpt2_cases import EXPORTERS, make_ctx, shifted_output_model
from tfopt.errors import TfoptError
from tfopt.results import to_jsonable
from tfopt_gpt2.cache import remember, source_model
from tfopt_gpt2.hooks import make_dummy_inputs_hook, verify_hook
from tfopt_gpt2.verify import TOLERANCES


def _run(exported_variant, tmp_path, model_path=None, *, model="tiny-gpt2", exporter="legacy", **options):
    variant_ctx, exported = exported_variant(model, exporter)
    ctx = make_ctx(tmp_path, model, exporter=exporter, **options)
    remember(ctx, source_model(variant_ctx))  # the exported torch model: no reload per test
    inputs = make_dummy_inputs_hook(ctx, exported)
    return verify_hook(ctx, exported, model_path or exported.model_path, inputs), exported


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_raw_export_passes_on_a_hundred_cases(exported_variant, tmp_path, exporter):
    result, _ = _run(exported_variant, tmp_path, exporter=exporter)
    assert result.passed and not result.failures and result.reference == "torch"
    assert result.precision == "fp32" and result.tolerance == TOLERANCES["fp32"] == 5e-4
    assert len(result.cases) == 100  # 32 dummy inputs topped up to verify_cases (100)
    assert result.overall.max_abs <= 5e-4 and result.overall.nan_count == 0 and result.nan_rate == 0.0
    assert result.top1_agreement == 1.0
    percentiles = result.max_abs_percentiles
    assert list(percentiles) == ["p50", "p90", "p95", "p99"]
    assert percentiles["p50"] <= percentiles["p90"] <= percentiles["p95"] <= percentiles["p99"] <= result.overall.max_abs
    assert set(result.outputs) == {"logits", "present"}
    case = result.cases[0]
    shape_keys = {"batch_size", "past_length", "sequence_length"}
    assert shape_keys | {"top1_agreement", "logits_max_abs", "present_max_abs", "max_abs"} <= set(case)
    report = to_jsonable(result)  # plain JSON for report.json, extra fields included
    assert report["max_abs_percentiles"]["p95"] == percentiles["p95"] and report["top1_agreement"] == 1.0


def test_base_model_is_compared_on_hidden_states(exported_variant, tmp_path):
    result, _ = _run(exported_variant, tmp_path, model="tiny-gpt2-base", verify_cases=10)
    assert result.passed and result.top1_agreement is None and set(result.outputs) == {"last_hidden_state", "present"}


@pytest.mark.parametrize("output", ["logits", "present.1.value"])
def test_a_small_error_in_any_output_fails_fp32_but_passes_fp16(exported_variant, tmp_path, output):
    _, exported = exported_variant("tiny-gpt2", "legacy")
    shifted = tmp_path / "shifted.onnx"
    shifted_output_model(exported.model_path, shifted, output, 2e-3)
    result, _ = _run(exported_variant, tmp_path, shifted, verify_cases=20)
    assert not result.passed and 1.9e-3 < result.overall.max_abs < 2.1e-3
    assert any("exceeds the fp32 tolerance" in failure for failure in result.failures)
    assert result.top1_agreement == 1.0  # a uniform shift moves no argmax
    group = "logits" if output == "logits" else "present"
    assert result.outputs[group].max_abs > 1.9e-3 and result.outputs[({"logits", "present"} - {group}).pop()].max_abs < 1e-4
    assert _run(exported_variant, tmp_path, shifted, verify_cases=20, precision="fp16")[0].passed


def test_next_token_disagreement_fails_even_within_tolerance(exported_variant, tmp_path):
    _, exported = exported_variant("tiny-gpt2", "legacy")
    biased = tmp_path / "biased.onnx"
    shifted_output_model(exported.model_path, biased, "logits", 50.0, column=7)  # token 7 always wins
    result, _ = _run(exported_variant, tmp_path, biased, verify_cases=20, tolerance=1e3)
    assert result.top1_agreement < 0.1 and not result.passed
    assert result.failures == [f"next-token agreement {result.top1_agreement:.1%} is below 95%"]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nans_are_counted_as_a_rate(exported_variant, tmp_path):
    _, exported = exported_variant("tiny-gpt2", "legacy")
    nan_model = tmp_path / "nan.onnx"
    shifted_output_model(exported.model_path, nan_model, "present.0.key", float("nan"))
    result, _ = _run(exported_variant, tmp_path, nan_model, verify_cases=5)
    assert not result.passed and result.overall.nan_count > 0 and 0 < result.nan_rate < 1
    assert result.failures[0].startswith(f"{result.overall.nan_count} NaN values")


def test_verify_cases_zero_uses_only_the_given_inputs(exported_variant, tmp_path):
    result, _ = _run(exported_variant, tmp_path, verify_cases=0, cases=3)
    assert len(result.cases) == 3 and result.passed


def test_unknown_precision_and_unreadable_model_are_one_line_errors(exported_variant, tmp_path):
    with pytest.raises(TfoptError, match="unknown precision 'fp8'"):
        _run(exported_variant, tmp_path, precision="fp8")
    _, exported = exported_variant("tiny-gpt2", "legacy")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported.model_path.read_bytes()[:1000])
    with pytest.raises(TfoptError, match="ONNX Runtime cannot load it") as error:
        _run(exported_variant, tmp_path, truncated)
    assert "\n" not in str(error.value)


def test_model_is_loaded_once_per_run(tmp_path, monkeypatch):
    from tfopt_gpt2 import cache

    calls = []
    real_load = cache.load_source
    monkeypatch.setattr(cache, "load_source", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    ctx = make_ctx(tmp_path, "tiny-gpt2")
    first = cache.source_model(ctx)
    assert cache.source_model(ctx) is first and len(calls) == 1
    assert cache.source_model(make_ctx(tmp_path, "tiny-gpt2")) is not first  # another run, another model
    ctx.options["attn_implementation"] = "eager"
    assert cache.source_model(ctx).model.config._attn_implementation == "eager" and len(calls) == 3
