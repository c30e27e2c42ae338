"""int8 and fp16 of GPT-2's dynamo export, fused, with its weights as external data.

The fused dynamo GPT-2 feeds c_proj's MatMul from MultiHeadAttention, a contrib op onnx
cannot type: ONNX Runtime's quantizer used to stop there ("Unable to find data type").
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest

from gpt2_cases import make_ctx
from tfopt.graph import fuse_file
from tfopt.precision import convert
from tfopt_gpt2.cache import remember, source_model
from tfopt_gpt2.hooks import make_dummy_inputs_hook, verify_hook


def _locations(model_path: Path) -> set[str]:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return {entry.value for tensor in graph.initializer for entry in tensor.external_data if entry.key == "location"}


def _linears(model_path: Path) -> int:
    """MatMul and Gemm nodes with a constant weight (what dynamic quantization can make int8)."""
    model = onnx.load(str(model_path), load_external_data=False)
    weights = {tensor.name for tensor in model.graph.initializer}
    return sum(1 for node in model.graph.node if node.op_type in ("MatMul", "Gemm") and node.input[1] in weights)


@pytest.mark.parametrize("precision, tolerance", [("int8", 3.0), ("fp16", 0.2)])
def test_dynamo_gpt2_with_external_data_converts_and_verifies(exported_variant, tmp_path, monkeypatch, precision, tolerance):
    from tfopt.graph import io as graph_io

    variant_ctx, exported = exported_variant("tiny-gpt2", "dynamo")
    monkeypatch.setattr(graph_io, "EXTERNAL_DATA_THRESHOLD", 0)  # the fused model's weights go to optimized.onnx.data
    fused = fuse_file(exported.model_path, tmp_path / "optimized.onnx", exported.info)
    assert _locations(fused.model_path) == {"optimized.onnx.data"}
    monkeypatch.chdir(tmp_path.parent)
    converted = convert(fused.model_path, precision)
    assert _locations(converted.model_path) == {f"optimized.{precision}.onnx.data"}
    ops = Counter(node.op_type for node in onnx.load(str(converted.model_path)).graph.node)
    if precision == "int8":
        assert ops["MatMulInteger"] == _linears(fused.model_path) > 0 and _linears(converted.model_path) == 0
    ctx = make_ctx(tmp_path, "tiny-gpt2", precision=precision, verify_cases=20)
    remember(ctx, source_model(variant_ctx))
    result = verify_hook(ctx, exported, converted.model_path, make_dummy_inputs_hook(ctx, exported))
    assert result.passed, result.failures
    assert result.tolerance == tolerance and result.nan_rate == 0 and result.top1_agreement >= 0.95
    assert result.overall.max_abs > 1e-4  # really converted
