"""The example ViT plugin, through tfopt's public API: conformance on both exporters, every layer fused,
parity and latency against torch, its family rule, and that it uses documented API only."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tfopt
from tfopt.graph import fuse_model
from tfopt.results import ModelInfo, RunContext
from tfopt.testing import check_adapter

PLUGIN = Path(__file__).parents[1] / "tfopt_vit" / "__init__.py"
DOCS = Path(__file__).parents[3] / "docs" / "plugins.md"
LAYERS = 2  # tiny-vit


def _conforming_run(tmp_path, exporter, attn):
    outcome = check_adapter("vit", source="tiny-vit", options={"exporter": exporter, "attn_implementation": attn}, work_dir=tmp_path)
    return outcome.report, tmp_path / "run"


@pytest.mark.parametrize(
    ("exporter", "attn"),
    [("dynamo", "sdpa"), ("legacy", "eager"), pytest.param("dynamo", "eager", marks=pytest.mark.slow),
     pytest.param("legacy", "sdpa", marks=pytest.mark.slow)],
)
def test_every_layer_fused_and_matches_torch(tmp_path, exporter, attn):
    report, run_dir = _conforming_run(tmp_path, exporter, attn)
    counts = report["fuse"]["op_counts"]
    assert counts["MultiHeadAttention"] == LAYERS and counts["BiasGelu"] == LAYERS
    assert counts["SkipLayerNormalization"] == 2 * LAYERS + 1  # + the position-embedding LayerNorm (family rule)
    assert "Softmax" not in counts and "LayerNormalization" not in counts
    assert report["fuse"]["rule_counts"]["VitPositionSkipLN"] == 1 and report["fuse"]["missing"] == []
    verified = report["verify"]
    assert verified["reference"] == "torch" and verified["overall"]["max_abs"] < 1e-4
    assert [case["batch_size"] for case in verified["cases"]] == [1, 2, 4]
    rows = report["benchmark"]["rows"]
    assert {row["engine"] for row in rows} == {"torch", "ort:raw", "ort:tfopt"}
    assert all(row["shape"] == {"batch": 1} and row["p50_ms"] > 0 for row in rows)
    if exporter == "dynamo":  # torch writes an all-true mask; the shared rule fuses it as no mask
        exported = onnx.load(run_dir / "exported.onnx").graph
        producer = {output: node for node in exported.node for output in node.output}
        masks = [producer.get(name) for softmax in exported.node if softmax.op_type == "Softmax"
                 for name in producer[softmax.input[0]].input]  # Softmax(Add(scores, mask))
        wheres = [node for node in masks if node is not None and node.op_type == "Where"]
        assert len(wheres) == LAYERS and all(producer[node.input[0]].op_type == "Expand" for node in wheres)
        fused = onnx.load(run_dir / "optimized.onnx").graph
        assert all(len(node.input) <= 4 or not node.input[4] for node in fused.node if node.op_type == "MultiHeadAttention")


def test_tfopt_verify_dir_rebuilds_the_same_weights(tmp_path):
    """tiny-vit is built from a fixed seed, so a later `tfopt verify DIR` compares with the same model."""
    _, run_dir = _conforming_run(tmp_path, "dynamo", "sdpa")
    done = subprocess.run([sys.executable, "-m", "tfopt", "verify", str(run_dir), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    verified = json.loads(done.stdout)
    assert verified["passed"] and verified["reference"] == "torch" and verified["overall"]["max_abs"] < 1e-4


def _position_graph(constant_table: bool) -> onnx.ModelProto:
    """LayerNorm(x + table), its sum read again (as ViT's first residual): table a constant (1, 5, 8) or an input.

    Without the family rule the constant case stays unfused: the shared rule leaves constant addends alone."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), n) for n in ("gamma", "beta")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 8])]
    if constant_table:
        inits.append(numpy_helper.from_array(rng.standard_normal((1, 5, 8)).astype(np.float32), "table"))
    else:
        inputs.append(helper.make_tensor_value_info("table", TensorProto.FLOAT, [1, 5, 8]))
    nodes = [
        helper.make_node("Add", ["x", "table"], ["total"]),
        helper.make_node("LayerNormalization", ["total", "gamma", "beta"], ["normed"], axis=-1, epsilon=1e-6),
        helper.make_node("Add", ["normed", "total"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 8])]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_family_rule_fuses_a_constant_table_only_and_keeps_parity():
    from tfopt_vit import POSITION_SKIP_LN

    info = ModelInfo("vit", expected={"SkipLayerNormalization": 1}, rules=[POSITION_SKIP_LN])
    original = _position_graph(constant_table=True)
    plain = fuse_model(ir.serde.deserialize_model(original), ModelInfo("vit", expected={}))
    assert "SkipLayerNormalization" not in plain.op_counts  # the shared rules alone leave it
    model = ir.serde.deserialize_model(original)
    stats = fuse_model(model, info)
    assert stats.rule_counts["VitPositionSkipLN"] == 1 and stats.op_counts == {"Add": 1, "SkipLayerNormalization": 1}
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 5, 8)).astype(np.float32)
        want = ort.InferenceSession(original.SerializeToString()).run(None, {"x": x})[0]
        got = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    refused = fuse_model(ir.serde.deserialize_model(_position_graph(constant_table=False)), info)
    # a table that is an input is a plain skip: the shared rule takes it, the family rule does not fire
    assert refused.rule_counts["VitPositionSkipLN"] == 0 and refused.rule_counts["SkipLayerNorm+Sum"] == 1


def test_sequence_lengths_do_not_apply_to_images(tmp_path):
    from tfopt_vit import benchmark

    ctx = RunContext(family="vit", source="tiny-vit", work_dir=tmp_path, options={"bench_sequence_lengths": [8]})
    with pytest.raises(tfopt.TfoptError, match="does not apply"):
        benchmark(ctx=ctx, exported=None, models={})


def _documented(module: str, name: str, docs: str) -> bool:
    return re.search(rf"`{re.escape(module)}`[^\n]*\b{re.escape(name)}\b", docs) is not None or f"`{module}.{name}" in docs


def test_plugin_imports_only_documented_api():
    """Fails when the plugin reaches past docs/plugins.md: a module or name the docs do not list."""
    docs = DOCS.read_text(encoding="utf-8")
    tree = ast.parse(PLUGIN.read_text(encoding="utf-8"))
    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfopt"):
            used += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            used += [(alias.name, None) for alias in node.names if alias.name.startswith("tfopt") and alias.name != "tfopt"]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tfopt":
            used.append(("tfopt", node.attr))
    assert used, "the plugin imports nothing from tfopt?"
    undocumented = [f"{module}.{name}" for module, name in used if name is None or not _documented(module, name, docs)]
    assert undocumented == [], f"not in docs/plugins.md: {undocumented}"


def test_plugin_code_fits_the_150_line_target():
    assert len(PLUGIN.read_text(encoding="utf-8").splitlines()) <= 150
