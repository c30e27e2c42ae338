"""int8 / int4 after fusion, on the encoder graph forms tfopt fuses: every linear MatMul is quantized and
feeds the fused ops (which stay), and the quantized model computes nearly what the fused fp32 one does
on padded shapes. Forms from tests/test_graph_forms.py (LayerNorm and Gelu spellings, ai.onnx domain)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from test_graph_forms import SHAPES, _feeds, encoder, fully_fused, fuse
from tfopt.bench import ort_session
from tfopt.graph.validate import validate_written
from tfopt.precision import convert

FORMS = {
    "base": dict(),
    "pow_div_layer_norm": dict(ln="pow_div"),
    "tanh_gelu": dict(act="tanh_cubic"),
    "quick_gelu": dict(act="quick"),
    "ai_onnx_domain": dict(opset_domain="ai.onnx"),
}
FUSED_OPS = ("EmbedLayerNormalization", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "QuickGelu")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("precision, quantized_op", [("int8", "MatMulInteger"), ("int4", "MatMulNBits")])
def test_quantized_linears_feed_the_fused_ops(tmp_path, form, precision, quantized_op):
    fused, stats = fuse(encoder(**FORMS[form]))
    assert not stats.missing
    path = tmp_path / "fused.onnx"
    ir.save(fused, path)
    converted = convert(path, precision)
    before = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    after = Counter(node.op_type for node in onnx.load(str(converted.model_path)).graph.node)
    assert before["MatMul"] == 6 * 2  # q, k, v, output, two FFN linears per layer
    assert after[quantized_op] == before["MatMul"] and after["MatMul"] == 0
    assert {op: after[op] for op in FUSED_OPS} == {op: before[op] for op in FUSED_OPS}
    assert sum(after[op] for op in FUSED_OPS) == sum(fully_fused().values())
    assert validate_written(converted.model_path, path, precision).passed
    reference, candidate = ort_session(path), ort_session(converted.model_path)
    for batch, sequence, padded in SHAPES:
        feed = _feeds(batch, sequence, padded)
        want, got = reference.run(None, feed)[0], candidate.run(None, feed)[0]
        valid = feed["attention_mask"].astype(bool)
        want, got = want[valid].ravel(), got[valid].ravel()
        cosine = float(want @ got / np.linalg.norm(want) / np.linalg.norm(got))
        assert cosine > (0.99 if precision == "int8" else 0.95), cosine
        assert np.abs(want - got).max() > 1e-5  # really quantized


# TensorFlow families (the .venv-tf deployment): each adapter's real run, int8 and int4 once between them.
@pytest.mark.parametrize(
    "plugin, model, precision, quantized_op",
    [("bert_tf", "tiny-bert-tf", "int8", "MatMulInteger"), ("bert_keras", None, "int4", "MatMulNBits")],
)
def test_tensorflow_families_quantize_every_linear(tmp_path, plugin, model, precision, quantized_op):
    pytest.importorskip(f"tfopt_{plugin}")
    from click.testing import CliRunner

    from tfopt.cli import main

    args = ["-q", "run", "--plugin", plugin, "--precision", precision, "--no-benchmark", "--output", str(tmp_path)]
    result = CliRunner().invoke(main, args + (["--model", model] if model else []))
    assert result.exit_code == 0, result.output
    fused = Counter(node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node)
    final = Counter(
        node.op_type for node in onnx.load(str(tmp_path / f"optimized.{precision}.onnx"), load_external_data=False).graph.node
    )
    assert fused["MatMul"] > 0 and final[quantized_op] == fused["MatMul"] and final["MatMul"] == 0
    assert {op: final[op] for op in FUSED_OPS} == {op: fused[op] for op in FUSED_OPS} and final["MultiHeadAttention"] > 0
