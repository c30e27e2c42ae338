"""Every family through the whole pipeline, and the same graphs through ``tfopt optimize`` as a user's own export.

Each run checks (``tfopt.testing.check_adapter``) that every expected fusion happened (the
counts the shared ``llm_counts`` states for the family: SimplifiedLayerNormalization,
SkipSimplifiedLayerNormalization, one Attention and two RotaryEmbedding per layer), that no
Softmax is left, that the written model was validated, and that logits and presents match
torch within 1e-4 on real tokens of left-padded steps (first step, decode, past + several new
tokens, batch up to 4).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tfopt.graph import llm_counts
from tfopt.testing import check_adapter
from tfopt_llama.models import FAMILIES

FAMILY_COUNTS = {  # what each tiny 2-layer family must come out as, stated independently of the code
    "llama": (1, 4), "mistral": (1, 4), "qwen2": (1, 4), "phi3": (1, 4), "gemma": (1, 4),
    "qwen3": (5, 4),  # + a Q and a K norm per layer
    "gemma2": (5, 4),  # + a norm after each sub-layer, before its residual Add
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_runs_fully_fused_and_matches_torch(tmp_path, family):
    options = {"bench_shapes": "1,0,4;2,4,1", "bench_repeat": 2, "bench_warmup": 1}
    outcome = check_adapter("llama", f"tiny-{family}", options, work_dir=tmp_path)
    assert outcome is not None
    report = json.loads(next(tmp_path.rglob("report.json")).read_text())
    plain, skip = FAMILY_COUNTS[family]
    fused = onnx.load(str(next(tmp_path.rglob("optimized.onnx"))))
    counts = {}
    for node in fused.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    assert counts.get("SimplifiedLayerNormalization") == plain and counts.get("SkipSimplifiedLayerNormalization") == skip
    assert counts.get("Attention") == 2 and counts.get("RotaryEmbedding") == 4, counts
    assert not {"Softmax", "Pow", "ReduceMean", "Neg"} & set(counts), counts  # no attention, norm or rotate-half left
    assert {i.domain or "ai.onnx": i.version for i in fused.opset_import}["ai.onnx"] == 23
    verify = report["verify"]
    assert verify["passed"] and verify["overall"]["max_abs"] <= 1e-4
    assert {case["past_length"] for case in verify["cases"]} >= {0, 5, 16}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_users_own_export_through_optimize(tmp_path, attn):
    """The user's export (the adapter's, but handed over as a file) keeps its IO names and meaning."""
    from click.testing import CliRunner

    from tfopt.cli import main
    from tfopt.causal_lm import StepShape
    from tfopt.results import RunContext
    from tfopt_llama.export import export_source
    from tfopt_llama.step import feeds, output_names, source_model, torch_outputs

    ctx = RunContext(family="llama", source="tiny-mistral", work_dir=tmp_path / "export", options={"attn_implementation": attn})
    exported = export_source(ctx)
    out = tmp_path / "mine.opt.onnx"
    result = CliRunner().invoke(main, ["optimize", "--input", str(exported.model_path), "--output", str(out), "--model_type", "mistral"])
    assert result.exit_code == 0, result.output
    assert "expected fusion did not happen" not in result.output and "opset raised from 20 to 23" in result.output
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == [i.name for i in onnx.load(str(exported.model_path)).graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in onnx.load(str(exported.model_path)).graph.output]
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    source = source_model(ctx)
    for feed in feeds(source, [StepShape(3, 0, 6), StepShape(2, 9, 2), StepShape(4, 5, 1)], seed=5):
        expected = torch_outputs(source, feed)
        actual = session.run(output_names(source), feed)
        real = feed["attention_mask"][:, -feed["input_ids"].shape[1]:].astype(bool)
        np.testing.assert_allclose(actual[0][real], expected[0][real], atol=1e-4, rtol=0)
        keys = feed["attention_mask"].astype(bool)
        for reference, candidate in zip(expected[1:], actual[1:]):
            np.testing.assert_allclose(candidate.transpose(0, 2, 1, 3)[keys], reference.transpose(0, 2, 1, 3)[keys], atol=1e-5, rtol=0)


def test_counts_helper_states_the_layouts():
    """The shared counts for 3 layers: norms 1 + 2L skip (+2L for Q/K norms or sandwich norms)."""
    assert llm_counts(3) == {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 6, "Attention|MultiHeadAttention": 3, "RotaryEmbedding": 6}
    assert llm_counts(3, qk_norms=True)["SimplifiedLayerNormalization"] == 7
    assert llm_counts(3, sandwich_norms=True)["SimplifiedLayerNormalization"] == 7


def test_unknown_source_is_one_line(tmp_path):
    from tfopt.errors import TfoptError
    from tfopt_llama.models import load_source

    with pytest.raises(TfoptError, match="unknown source 'tiny-falcon'"):
        load_source("tiny-falcon")
    with pytest.raises(TfoptError, match="eagerly only"):
        load_source("tiny-gemma2", "sdpa")


@pytest.mark.parametrize("precision", ["int8", "int4", "fp16"])
def test_lower_precisions_load_and_stay_close(tmp_path, precision):
    """ONNX's own Attention is no contrib Attention: int8's dynamic quantizer must leave it alone.

    The tiny model has random weights, so next-token agreement is not judged here (a trained
    model is needed for that); the converted model must load, run and stay near fp32.
    """
    import onnxruntime as ort

    from tfopt.causal_lm import StepShape
    from tfopt.graph import fuse_file
    from tfopt.precision import convert
    from tfopt.results import RunContext
    from tfopt_llama.export import export_source
    from tfopt_llama.step import feeds, output_names, source_model

    ctx = RunContext(family="llama", source="tiny-qwen2", work_dir=tmp_path)
    exported = export_source(ctx)
    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info)
    converted = convert(fused.model_path, precision)
    ops = {node.op_type for node in onnx.load(str(converted.model_path)).graph.node}
    assert "QAttention" not in ops and "Attention" in ops
    assert ("MatMulNBits" in ops) == (precision == "int4") and ("DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops) == (precision == "int8")
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fused.model_path, converted.model_path)]
    (feed,) = feeds(source_model(ctx), [StepShape(2, 4, 3)], seed=2)
    reference, candidate = (s.run(output_names(source_model(ctx)), feed)[0] for s in sessions)
    cosine = float((reference * candidate).sum() / np.linalg.norm(reference) / np.linalg.norm(candidate))
    assert cosine > 0.98, cosine


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "phi3"])
def test_greedy_tokens_are_transformers_own(tmp_path, family):
    """32 greedy tokens of the fused model, cache in ONNX Runtime, equal transformers' generate on left-padded prompts."""
    from tfopt.generation import example_prompts, generate_onnx, generate_torch
    from tfopt.graph import fuse_file
    from tfopt.results import RunContext
    from tfopt_llama.export import export_source
    from tfopt_llama.step import source_model

    ctx = RunContext(family="llama", source=f"tiny-{family}", work_dir=tmp_path)
    exported = export_source(ctx)
    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info)
    source = source_model(ctx)
    ids, mask = example_prompts(source.vocab_size, 3, 6, seed=4)
    onnx_tokens = generate_onnx(fused.model_path, ids, mask, 32)
    torch_tokens = generate_torch(source.model, ids, mask, 32)
    np.testing.assert_array_equal(onnx_tokens, torch_tokens)


@pytest.mark.parametrize("family, attn", [("llama", "sdpa"), ("qwen3", "eager"), ("phi3", "sdpa")])
def test_legacy_exporter_graph_fuses_through_optimize(tmp_path, family, attn):
    """torch's TorchScript exporter writes views with computed shapes (opset 17): sized from their targets,
    the same rules fuse them, and the opset goes from 17 to 23."""
    import torch

    from tfopt import causal_lm
    from tfopt.causal_lm import StepShape
    from tfopt.graph import fuse_file
    from tfopt.results import ModelInfo
    from tfopt.torch_kit import quiet_export
    from tfopt_llama.models import FAMILIES, load_source
    from tfopt_llama.step import feeds, output_names, torch_outputs

    source = load_source(f"tiny-{family}", attn)
    step = causal_lm.decoder_step(source.model, source.num_layers, lm_head=True)
    (example,) = feeds(source, [StepShape(2, 5, 3)])
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"}, "position_ids": {0: "batch", 1: "sequence"}}
    axes.update({name: {0: "batch", 2: "past"} for name in causal_lm.past_names(source.num_layers)})
    path = tmp_path / "legacy.onnx"
    with quiet_export():
        torch.onnx.export(
            step, causal_lm.torch_feed(example, source.num_layers), str(path), dynamo=False, opset_version=17,
            input_names=causal_lm.input_names(source.num_layers), output_names=output_names(source), dynamic_axes=axes,
        )
    fused = fuse_file(path, tmp_path / "legacy.opt.onnx", ModelInfo(model_type=FAMILIES[family].model_type))
    assert fused.missing == [], fused.missing
    assert fused.op_counts.get("Attention") == 2 and fused.op_counts.get("RotaryEmbedding") == 4
    import onnxruntime as ort

    session = ort.InferenceSession(str(fused.model_path), providers=["CPUExecutionProvider"])
    for feed in feeds(source, [StepShape(3, 0, 5), StepShape(2, 6, 2)], seed=8):
        expected, actual = torch_outputs(source, feed, step), session.run(output_names(source), feed)
        real = feed["attention_mask"][:, -feed["input_ids"].shape[1]:].astype(bool)
        np.testing.assert_allclose(actual[0][real], expected[0][real], atol=1e-4, rtol=0)


def test_tracing_a_decoder_with_a_cache_fuses_what_the_untraced_plan_fuses(tmp_path):
    """While a MatchingTracer records, rules build replacements they do not insert; the present swaps skip those."""
    from onnxscript.rewriter.pattern import MatchingTracer

    from tfopt.graph import fuse_model, load_model
    from tfopt.results import RunContext
    from tfopt_llama.export import export_source

    exported = export_source(RunContext(family="llama", source="tiny-llama", work_dir=tmp_path))
    traced = fuse_model(load_model(exported.model_path), exported.info, tracer=MatchingTracer())
    plain = fuse_model(load_model(exported.model_path), exported.info)
    assert traced.op_counts == plain.op_counts and traced.missing == [] and plain.op_counts["Attention"] >= 1
