"""Every family through the whole pipeline: two graphs fused completely, parity with torch, generation identical.

``check_adapter`` (the conformance kit) asserts that every expected fusion happened in the
decoder and in its companion encoder, that neither file holds a primitive no fusion replaced,
and that verification passed: encoder and decoder within 1e-4 of torch (first step with an
empty past, later steps with one or several new tokens, padded sources), and greedy and beam-4
generation of up to 32 tokens token-identical to transformers' ``generate``.
"""

from __future__ import annotations

import json
from collections import Counter

import onnx
import pytest

from tfopt.testing import check_adapter

# (attention, norms) per tiny 2-layer family and graph, stated independently of the adapter's formula:
# encoder 1 attention and 2 norms a layer, decoder 2 attentions and 3 norms a layer.
T5_LIKE = {"encoder": {"Attention": 2, "SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 4},
           "decoder": {"Attention": 4, "SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 6}}
COUNTS = {
    "tiny-t5": T5_LIKE,
    "tiny-flan-t5": {graph: {**counts, "FastGelu": 2} for graph, counts in T5_LIKE.items()},  # gated-gelu
    "tiny-bart": {"encoder": {"MultiHeadAttention": 2, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 4, "BiasGelu": 2},
                  "decoder": {"Attention": 4, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 6, "BiasGelu": 2}},
    "tiny-marian": {"encoder": {"MultiHeadAttention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2},
                    "decoder": {"Attention": 4, "SkipLayerNormalization": 6, "BiasGelu": 2}},
    # pre-LN: the decoder's final norm reads a residual too; the encoder's first reads the conv front end
    "tiny-whisper": {"encoder": {"Attention": 2, "SkipLayerNormalization": 4, "LayerNormalization": 1, "BiasGelu": 2, "Gelu": 2},
                     "decoder": {"Attention": 4, "SkipLayerNormalization": 7, "BiasGelu": 2}},
}
QUICK = {"bench_shapes": "1,4,1", "bench_repeat": 2, "bench_warmup": 1}
CASES = [(name, "legacy") for name in COUNTS] + [(name, "dynamo") for name in ("tiny-t5", "tiny-whisper")]
SLOW_CASES = [(name, "dynamo") for name in ("tiny-flan-t5", "tiny-bart", "tiny-marian")]


def _counts(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


LEGACY = {
    # The legacy exporter reads the batch size of Whisper's cross-attention reshape from the decoder's
    # hidden states, so the encoder graph runs the decoder's start step up to layer 1's cross-attention:
    # 3 attentions, 5 SkipLayerNormalization and a gelu more (all fused; docs/seq2seq.md).
    ("tiny-whisper", "encoder"): {"Attention": 5, "SkipLayerNormalization": 9, "BiasGelu": 3},
    # its token + position lookup's norm becomes EmbedLayerNormalization (dynamo's GatherND: SkipLayerNormalization)
    ("tiny-whisper", "decoder"): {"EmbedLayerNormalization": 1, "SkipLayerNormalization": 6},
}


def _check(tmp_path, name, exporter):
    check_adapter("seq2seq", name, {**QUICK, "exporter": exporter}, work_dir=tmp_path)
    report = json.loads(next(tmp_path.rglob("report.json")).read_text())
    run_dir = next(tmp_path.rglob("report.json")).parent
    for graph in ("encoder", "decoder"):
        counts = _counts(run_dir / f"{graph}.opt.onnx")
        expected = {**COUNTS[name][graph], **(LEGACY.get((name, graph), {}) if exporter == "legacy" else {})}
        for op, want in expected.items():
            assert counts[op] == want, (graph, op, dict(counts))
        assert not {"Softmax", "Erf", "Pow", "ReduceMean"} & set(counts), (graph, dict(counts))
    verify = report["verify"]
    assert verify["passed"] and verify["overall"]["max_abs"] <= 1e-4
    generation = [case for case in verify["cases"] if "generation" in case]
    assert [case["generation"] for case in generation] == ["greedy", "beam-4"]
    assert all(case["identical"] for case in generation)
    assert {case["past_length"] for case in verify["cases"] if case.get("graph") == "decoder"} >= {0, 5, 16}
    assert {row["engine"] for row in report["benchmark"]["rows"]} == {"torch", "ort:raw", "ort:tfopt"}
    assert report["outputs"]["encoder_final"].endswith("encoder.opt.onnx")


@pytest.mark.parametrize("name,exporter", CASES)
def test_family_runs_fully_fused_and_generates_like_transformers(tmp_path, name, exporter):
    _check(tmp_path, name, exporter)


@pytest.mark.slow
@pytest.mark.parametrize("name,exporter", SLOW_CASES)
def test_family_on_the_other_exporter(tmp_path, name, exporter):
    _check(tmp_path, name, exporter)
