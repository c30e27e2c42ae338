"""ONNX Runtime-compatible `tfopt optimize`, `python -m tfopt.optimizer` and `tfopt.optimize_model`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import tfopt
from tfopt.cli import main
from tfopt.errors import TfoptError
from tfopt.feeds import dummy_feeds, session_feed
from tfopt.optimizer import MODEL_TYPES, ORT_STATISTICS_OPS, OptimizedModel

from tfopt_host_models import HEADS, HIDDEN, LAYERS


def _max_diff(reference_path, candidate_path) -> float:
    reference, candidate = ort.InferenceSession(str(reference_path)), ort.InferenceSession(str(candidate_path))
    worst = 0.0
    for feed in dummy_feeds(reference_path, batch_sizes=(1, 3), sequence_lengths=(8,)):
        expected = reference.run(None, session_feed(reference, feed))[0]
        actual = candidate.run(None, session_feed(candidate, feed))[0]
        mask = feed["attention_mask"].astype(bool)
        worst = max(worst, float(np.abs(actual - expected)[mask].max()))
    return worst


def test_optimize_model_api_fuses_and_saves(tiny_bert, tmp_path):
    optimized = tfopt.optimize_model(str(tiny_bert), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN)
    assert isinstance(optimized, OptimizedModel)
    statistics = optimized.get_fused_operator_statistics()
    assert set(ORT_STATISTICS_OPS) <= set(statistics)
    assert {op: statistics[op] for op in ("EmbedLayerNormalization", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu")} == {
        "EmbedLayerNormalization": 1, "MultiHeadAttention": LAYERS, "SkipLayerNormalization": 2 * LAYERS, "BiasGelu": LAYERS,
    }
    assert statistics["Attention"] == 0 and optimized.missing_fusions == []
    out = optimized.save_model_to_file(tmp_path / "out.onnx")
    assert _max_diff(tiny_bert, out) <= 1e-4


def test_optimize_model_detects_heads_and_hidden_size(tiny_bert):
    optimized = tfopt.optimize_model(tiny_bert)  # num_heads=0, hidden_size=0: detect
    assert (optimized.stats.num_heads, optimized.stats.hidden_size) == (HEADS, HIDDEN)
    assert optimized.get_fused_operator_statistics()["MultiHeadAttention"] == LAYERS


def test_model_proto_edits_are_what_gets_saved(tiny_bert, tmp_path):
    optimized = tfopt.optimize_model(tiny_bert)
    assert isinstance(optimized.model, onnx.ModelProto)
    optimized.model.producer_name = "edited"
    optimized.save_model_to_file(tmp_path / "out.onnx")
    assert onnx.load(tmp_path / "out.onnx").producer_name == "edited"


def test_convert_float_to_float16_keeps_io_types(tiny_bert, tmp_path):
    optimized = tfopt.optimize_model(tiny_bert)
    optimized.convert_float_to_float16(keep_io_types=True)
    out = optimized.save_model_to_file(tmp_path / "fp16.onnx")
    model = onnx.load(out)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    assert _max_diff(tiny_bert, out) < 2e-2


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_bert_family_type_uses_the_bert_fusion(tiny_bert, model_type):
    optimized = tfopt.optimize_model(tiny_bert, model_type=model_type)
    assert optimized.get_fused_operator_statistics()["SkipLayerNormalization"] == 2 * LAYERS


def test_disabled_fusions_and_ort_fusion_options(tiny_bert):
    no_attention = tfopt.optimize_model(tiny_bert, disabled_fusions=["attention"])
    assert no_attention.get_fused_operator_statistics()["MultiHeadAttention"] == 0

    class FusionOptions:  # the attributes of onnxruntime.transformers.fusion_options.FusionOptions
        enable_gelu = True
        enable_layer_norm = True
        enable_attention = True
        enable_skip_layer_norm = False
        enable_embed_layer_norm = True
        enable_bias_gelu = True

    no_skip = tfopt.optimize_model(tiny_bert, optimization_options=FusionOptions())
    assert no_skip.get_fused_operator_statistics()["SkipLayerNormalization"] == 0
    with pytest.raises(TfoptError, match="unknown fusion name"):
        tfopt.optimize_model(tiny_bert, disabled_fusions=["everything"])


def test_use_gpu_fuses_packed_attention(tiny_bert):
    statistics = tfopt.optimize_model(tiny_bert, use_gpu=True).get_fused_operator_statistics()
    assert statistics["Attention"] == LAYERS and statistics["MultiHeadAttention"] == 0


@pytest.mark.parametrize("kwargs", [{"opt_level": 99}, {"only_onnxruntime": True, "opt_level": 1}])
def test_opt_levels_run_onnx_runtimes_optimizer(tiny_bert, tmp_path, kwargs):
    optimized = tfopt.optimize_model(tiny_bert, **kwargs)
    out = optimized.save_model_to_file(tmp_path / "out.onnx")
    assert _max_diff(tiny_bert, out) <= 1e-4
    if kwargs.get("only_onnxruntime"):
        assert optimized.stats is None and optimized.get_fused_operator_statistics()["MultiHeadAttention"] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model_type": "gpt9"}, "unknown model type 'gpt9'; valid: bert, roberta, distilbert, albert"),
        ({"num_heads": 5, "hidden_size": 32}, "num_heads=5 does not divide hidden_size=32"),
        ({"num_heads": -1}, "must be >= 0"),
        ({"opt_level": 3}, "opt_level must be one of 0, 1, 2, 99"),
    ],
)
def test_api_argument_errors(tiny_bert, kwargs, message):
    with pytest.raises(TfoptError, match=message):
        tfopt.optimize_model(tiny_bert, **kwargs)


# ----------------------------------------------------------------------------- command line


def _cli(*args):
    return CliRunner().invoke(main, ["optimize", *map(str, args)], catch_exceptions=False)


def test_cli_optimize_with_dash_and_underscore_spellings(tiny_bert, tmp_path):
    out = tmp_path / "out.onnx"
    result = _cli("--input", tiny_bert, "--output", out, "--model-type", "bert", "--num_heads", HEADS, "--hidden-size", HIDDEN, "--verbose")
    assert result.exit_code == 0, result.output
    assert "tfopt: fused: EmbedLayerNormalization 1, MultiHeadAttention 2, BiasGelu 2, SkipLayerNormalization 4" in result.stderr
    assert "tfopt:   rule EmbedLayerNorm: 1" in result.stderr and "detected num_heads=4, hidden_size=32" in result.stderr
    assert result.stdout == "" and _max_diff(tiny_bert, out) <= 1e-4


def test_cli_optimize_flags(tiny_bert, tmp_path):
    out = tmp_path / "out.onnx"
    result = _cli("--input", tiny_bert, "--output", out, "--input_int32", "--float16", "--disable_attention", "--disable-bias-gelu")
    assert result.exit_code == 0, result.output
    model = onnx.load(out)
    assert {value.name: value.type.tensor_type.elem_type for value in model.graph.input}["input_ids"] == onnx.TensorProto.INT32
    ops = {node.op_type for node in model.graph.node}
    assert "MultiHeadAttention" not in ops and "BiasGelu" not in ops and "SkipLayerNormalization" in ops
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    assert "warning: expected fusion did not happen" not in result.stderr  # disabled fusions are not expected


def test_cli_optimize_warns_when_an_expected_fusion_did_not_happen(tiny_bert, tmp_path, monkeypatch):
    from tfopt import optimizer

    real_fuse_model = optimizer.fuse_model

    def fuse_but_miss_one(*args, **kwargs):
        stats = real_fuse_model(*args, **kwargs)
        stats.missing.append("Attention|MultiHeadAttention: expected 3, found 2")
        return stats

    monkeypatch.setattr(optimizer, "fuse_model", fuse_but_miss_one)
    result = _cli("--input", tiny_bert, "--output", tmp_path / "out.onnx")
    assert result.exit_code == 0  # like ONNX Runtime's tool: the model is still written, the gap is reported
    assert "tfopt: warning: expected fusion did not happen: Attention|MultiHeadAttention: expected 3, found 2" in result.stderr


def _bad_input(kind, tmp_path, tiny_bert):
    """(args, expected message) for each kind of bad input; every path lives in tmp_path."""
    model = tmp_path / "model.onnx"
    out = tmp_path / "out.onnx"
    if kind == "missing":
        return ["--input", tmp_path / "nope.onnx", "--output", out], "no such file"
    if kind == "corrupt":
        model.write_bytes(b"\x00\xffthis is not protobuf\x13\x37" * 10)
        return ["--input", model, "--output", out], "not a readable ONNX model"
    if kind == "truncated":
        data = tiny_bert.read_bytes()
        model.write_bytes(data[: len(data) // 2])
        return ["--input", model, "--output", out], "not a readable ONNX model"
    model.write_bytes(tiny_bert.read_bytes())
    if kind == "output_is_input":
        return ["--input", model, "--output", model], "output path is the input path"
    if kind == "heads":
        return ["--input", model, "--output", out, "--num_heads", 5, "--hidden_size", 32], "num_heads=5 does not divide hidden_size=32"
    if kind == "model_type":
        return ["--input", model, "--output", out, "--model_type", "gpt9"], "unknown model type 'gpt9'; valid: bert, roberta"
    if kind == "output_is_dir":
        (tmp_path / "dir").mkdir()
        return ["--input", model, "--output", tmp_path / "dir"], "is a directory"
    if kind == "output_under_file":
        return ["--input", model, "--output", model / "out.onnx"], "is not a directory"
    raise AssertionError(kind)


BAD_INPUTS = ["missing", "corrupt", "truncated", "output_is_input", "heads", "model_type", "output_is_dir", "output_under_file"]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_cli_optimize_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_bert, tmp_path, kind):
    args, message = _bad_input(kind, tmp_path, tiny_bert)
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")}
    result = _cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfopt: error: ") and message in lines[0], result.stderr
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")} == before  # nothing written or touched


def test_python_dash_m_is_the_same_command(tiny_bert, tmp_path):
    out = tmp_path / "out.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "tfopt.optimizer", "--input", str(tiny_bert), "--output", str(out), "--model_type", "bert"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "MultiHeadAttention 2" in done.stderr and out.is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "tfopt.optimizer", "--input", str(tiny_bert), "--output", str(tiny_bert)],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("tfopt: error: ") and "refusing to overwrite the input" in bad.stderr
