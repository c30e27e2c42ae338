"""int8 / int4 GPT-2 decoders: ops written, parity rules, and quality on a model trained on real text.

Random GPT-2 logits are nearly flat, so quality is measured on ``stdlib-gpt2-tiny``, trained
here (in a session cache, ~20-40 s) on the standard library's docstrings.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from gpt2_cases import make_ctx
from tfopt.bench import ort_session
from tfopt.errors import TfoptError
from tfopt.graph import fuse_file
from tfopt.precision import convert
from tfopt_gpt2.cache import remember, source_model
from tfopt_gpt2.hooks import convert_precision_hook, make_dummy_inputs_hook, verify_hook
from tfopt_gpt2.precision import calibration_for


def op_counts(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    """A fresh cache for the trained text models: the first request trains stdlib-gpt2-tiny (~20-40 s)."""
    import os

    cache = tmp_path_factory.mktemp("text-cache")
    previous = os.environ.get("TFOPT_CACHE_DIR")
    os.environ["TFOPT_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("TFOPT_CACHE_DIR", None)
    else:
        os.environ["TFOPT_CACHE_DIR"] = previous


@pytest.fixture(scope="module")
def fused_trained(exported_variant, tmp_path_factory, text_cache):
    """exporter -> (ctx, exported, fused) of stdlib-gpt2-tiny (random weights would make top-1 agreement meaningless)."""
    done = {}

    def get(exporter):
        if exporter not in done:
            ctx, exported = exported_variant("stdlib-gpt2-tiny", exporter)
            fused = fuse_file(exported.model_path, tmp_path_factory.mktemp(f"lowbit-{exporter}") / "optimized.onnx", exported.info)
            done[exporter] = (ctx, exported, fused)
        return done[exporter]

    return get


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize(
    "precision, method, quantized_op",
    [("int8", "weight_only", "MatMulNBits"), ("int8", "dynamic", "MatMulInteger"), ("int4", None, "MatMulNBits")],
)
@pytest.mark.parametrize("lm_head", ["quantized", "fp32"])
def test_quantized_decoder_keeps_fused_attention_and_passes_verify(fused_trained, tmp_path, exporter, precision, method, quantized_op, lm_head):
    variant_ctx, exported, fused = fused_trained(exporter)
    options = dict(precision=precision, lm_head_precision=lm_head, verify_cases=30)
    if method:
        options["int8_method"] = method
    ctx = make_ctx(tmp_path, "stdlib-gpt2-tiny", **options)
    remember(ctx, source_model(variant_ctx))
    converted = convert_precision_hook(ctx, fused)
    assert converted.validation is not None and converted.validation.passed
    before, after = op_counts(fused.model_path), op_counts(converted.model_path)
    linears = before["MatMul"]  # 4 per layer + the LM head
    # every weight MatMul feeds the fused ops quantized; the LM head as asked
    assert after[quantized_op] == linears - (lm_head == "fp32")
    assert after["MatMul"] == (lm_head == "fp32")
    for fused_op in ("MultiHeadAttention", "SkipLayerNormalization", "FastGelu"):
        assert after[fused_op] == before[fused_op] > 0
    result = verify_hook(ctx, exported, converted.model_path, make_dummy_inputs_hook(ctx, exported))
    assert result.passed, result.failures
    assert result.top1_agreement >= result.min_top1_agreement and result.overall.max_abs > 1e-3  # really quantized


def test_tied_head_is_untied_and_quantized(tmp_path):
    """GPT-2's tied head as the dynamo export of GPT-2 small writes it: MatMul(x, Transpose(table)).
    Quantized, it gets its own transposed weight; the Gather keeps the fp32 table."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.normal(size=(96, 64)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["hidden"]),
            helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
            helper.make_node("MatMul", ["hidden", "table_t"], ["logits"]),
        ],
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 96])],
        [numpy_helper.from_array(table, "table")],
    )
    source = tmp_path / "tied.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)
    feed = {"ids": rng.integers(0, 96, size=(2, 5))}
    expected = ort_session(source).run(None, feed)[0]
    for precision, op in (("int8", "MatMulInteger"), ("int4", "MatMulNBits")):
        result = convert(source, precision, tmp_path / f"tied.{precision}.onnx")
        assert any("tied LM head" in note for note in result.notes)
        counts = op_counts(result.model_path)
        assert counts[op] == 1 and counts["Transpose"] == 0 and counts["MatMul"] == 0
        got = ort_session(result.model_path).run(None, feed)[0]
        assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9
        assert np.abs(got - expected).max() > 0  # quantized, not copied
        kept = convert(source, precision, tmp_path / f"kept.{precision}.onnx", lm_head="fp32")
        assert op_counts(kept.model_path)["MatMul"] == 1
        np.testing.assert_allclose(ort_session(kept.model_path).run(None, feed)[0], expected, rtol=1e-6, atol=1e-6)


def test_bad_lm_head_choice_is_one_line(tmp_path, fused_trained):
    _, _, fused = fused_trained("dynamo")
    with pytest.raises(TfoptError, match="lm_head_precision must be one of quantized, int8, fp32"):
        convert(fused.model_path, "int4", tmp_path / "x.onnx", lm_head="int2")
    with pytest.raises(TfoptError, match="int4 block size must be a power of two >= 16"):
        convert(fused.model_path, "int4", tmp_path / "x.onnx", int4_block_size=24)
    assert not (tmp_path / "x.onnx").exists()


def test_int4_with_an_int8_head_and_smaller_blocks(fused_trained, tmp_path):
    variant_ctx, exported, fused = fused_trained("dynamo")
    ctx = make_ctx(tmp_path, "stdlib-gpt2-tiny", precision="int4", lm_head_precision="int8", int4_block_size=16, verify_cases=20)
    remember(ctx, source_model(variant_ctx))
    converted = convert_precision_hook(ctx, fused)
    nodes = [node for node in onnx.load(str(converted.model_path), load_external_data=False).graph.node if node.op_type == "MatMulNBits"]
    settings = [{a.name: a.i for a in node.attribute if a.name in ("bits", "block_size")} for node in nodes]
    head = [s for node, s in zip(nodes, settings) if node.output[0] == "logits"]
    assert head == [{"bits": 8, "block_size": 32}]
    assert all(s == {"bits": 4, "block_size": 16} for node, s in zip(nodes, settings) if node.output[0] != "logits")
    assert len(nodes) == op_counts(fused.model_path)["MatMul"]
    assert verify_hook(ctx, exported, converted.model_path, make_dummy_inputs_hook(ctx, exported)).passed


# ----------------------------------------------------------------------------- quality on real text


@pytest.fixture(scope="module")
def trained_decoders(fused_trained, text_cache, tmp_path_factory):
    """The fused fp32 decoder of stdlib-gpt2-tiny and its int8/int4 versions (LM head quantized),
    rounded to nearest and, as the gpt2 adapter does for a text model, by GPTQ."""
    ctx, _, fused = fused_trained("dynamo")
    models = {"fp32": fused.model_path}
    calibration = calibration_for(ctx, "int4", "weight_only")
    out = tmp_path_factory.mktemp("rounded")
    for precision in ("int8", "int4"):  # as the gpt2 adapter converts: int8 weight-only
        models[precision] = convert(fused.model_path, precision, out / f"{precision}.onnx", int8_method="weight_only").model_path
        models[f"{precision} gptq"] = convert(
            fused.model_path, precision, out / f"{precision}.gptq.onnx", int8_method="weight_only", calibration=calibration
        ).model_path
    return ctx, text_cache, models


def test_trained_model_is_cached_and_has_structure(trained_decoders):
    from tfopt_gpt2.textmodel import trained_model

    ctx, cache, models = trained_decoders
    (saved,) = list((cache / "gpt2-text").iterdir())
    assert saved.name.startswith("stdlib-gpt2-tiny-") and (saved / "config.json").is_file()
    again = trained_model("stdlib-gpt2-tiny")  # from the cache: the same weights
    first = source_model(ctx).model
    for (name, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name


@pytest.mark.parametrize("precision, min_top1, max_ppl_change", [("int8", 0.98, 0.01), ("int4", 0.95, 0.03)])
def test_quantized_quality_on_held_out_text(trained_decoders, precision, min_top1, max_ppl_change):
    from tfopt.text_quality import compare
    from tfopt_gpt2.textmodel import heldout_bytes

    _, _, models = trained_decoders
    text = heldout_bytes()
    reference = ort_session(models["fp32"])
    same = compare(reference, ort_session(models["fp32"]), text, window_count=8, prompt_count=4, new_tokens=16)
    # a trained model: far below the 256 of a uniform byte guess, and the measure is exact on itself
    assert same.reference_perplexity < 40 and same.top1_agreement == 1.0 and same.generation_rows_identical == 4
    quality = compare(reference, ort_session(models[precision]), text, window_count=8, prompt_count=4, new_tokens=16)
    assert min_top1 <= quality.top1_agreement < 1.0  # close, and really changed
    assert abs(quality.perplexity_change) <= max_ppl_change
    assert quality.generation_token_agreement >= 0.75


def test_gptq_rounding_agrees_more_than_nearest_on_held_out_text(trained_decoders):
    """Calibrated on training text only; judged on the held-out text."""
    from tfopt.text_quality import compare
    from tfopt_gpt2.textmodel import heldout_bytes

    _, _, models = trained_decoders
    text = heldout_bytes()
    reference = ort_session(models["fp32"])
    nearest = compare(reference, ort_session(models["int4"]), text, window_count=8, prompt_count=4, new_tokens=16)
    gptq = compare(reference, ort_session(models["int4 gptq"]), text, window_count=8, prompt_count=4, new_tokens=16)
    assert gptq.top1_agreement >= nearest.top1_agreement + 0.01
    assert abs(gptq.perplexity_change) < abs(nearest.perplexity_change)
    int8 = compare(reference, ort_session(models["int8 gptq"]), text, window_count=8, prompt_count=4, new_tokens=16)
    assert 0.98 <= int8.top1_agreement < 1.0


def test_adapter_rounds_text_models_by_gptq_and_others_to_nearest(fused_trained, tmp_path):
    variant_ctx, _, fused = fused_trained("dynamo")
    for rounding, expect_gptq in ((None, True), ("nearest", False)):
        options = {"precision": "int4"} | ({"weight_rounding": rounding} if rounding else {})
        ctx = make_ctx(tmp_path / str(rounding), "stdlib-gpt2-tiny", **options)
        remember(ctx, source_model(variant_ctx))
        converted = convert_precision_hook(ctx, fused)
        assert any("GPTQ" in note for note in converted.notes) == expect_gptq, converted.notes
    # dynamic int8 has no weights to round this way: the option does not apply
    assert calibration_for(make_ctx(tmp_path, "stdlib-gpt2-tiny", precision="int8", int8_method="dynamic"), "int8", "dynamic") is None
    assert calibration_for(make_ctx(tmp_path, "tiny-gpt2", precision="int4"), "int4", "weight_only") is None


@pytest.mark.parametrize(
    "source, rounding, message",
    [("tiny-gpt2", "gptq", "weight_rounding=gptq needs calibration text"), ("stdlib-gpt2-tiny", "best", "weight_rounding must be one of gptq, nearest")],
)
def test_bad_weight_rounding_is_one_line(tmp_path, source, rounding, message):
    ctx = make_ctx(tmp_path, source, precision="int4", weight_rounding=rounding)
    with pytest.raises(TfoptError, match=message):
        calibration_for(ctx, "int4", "weight_only")
