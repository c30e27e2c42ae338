"""`tfopt profile`: reading ONNX Runtime's trace, profiling real sessions, raw vs optimized, the CLI.

The trace-reading tests feed hand-written events whose medians are worked out by hand;
the session tests profile graphs whose nodes are known; the run-directory tests use a
tiny bert_pt run made in-process (skipped where the PyTorch adapters are not installed).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from tfopt.cli import main
from tfopt.errors import TfoptError
from tfopt.profile import (
    ModelProfile,
    OpTypeTime,
    compare_profiles,
    file_feed,
    model_node_domains,
    profile_model,
    summarize_trace,
)


def _run(ts, dur):
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur, "args": {}}


def _executor(ts, dur):
    return {"cat": "Session", "name": "SequentialExecutor::Execute", "ts": ts, "dur": dur, "args": {}}


def _kernel(name, op_type, ts, dur, index):
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
            "args": {"op_name": op_type, "provider": "CPUExecutionProvider", "node_index": str(index),
                     "input_type_shape": [{"float": [1, 4]}]}}


def _trace(per_run: list[dict[str, int]], run_lengths=None) -> list[dict]:
    """Runs one after another; in each, the named nodes (op type = first part of the name) with the given µs."""
    events = [{"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 50, "args": {}},
              _kernel("init_Shape", "Shape", 10, 5, 99)]  # before any run: not counted
    start = 100
    for number, durations in enumerate(per_run):
        run_length = (run_lengths or [1000] * len(per_run))[number]
        events += [_run(start, run_length), _executor(start + 5, run_length - 10)]
        ts = start + 10
        for index, (name, dur) in enumerate(durations.items()):
            events.append(_kernel(name, name.split("_")[0], ts, dur, index))
            ts += dur + 1
        start += run_length + 100
    return events


def test_trace_averages_the_quieter_runs_leaves_out_warmup_and_adds_up():
    per_run = [
        {"MatMul_a": 900, "MatMul_b": 10, "Attention_c": 50, "If_d": 30},  # warm-up run: left out
        {"MatMul_a": 100, "MatMul_b": 20, "Attention_c": 60, "If_d": 30},
        {"MatMul_a": 900, "MatMul_b": 40, "Attention_c": 40, "If_d": 30},  # preempted: the run took twice as long
        {"MatMul_a": 110, "MatMul_b": 30, "Attention_c": 50, "If_d": 30},
    ]
    profile = summarize_trace(
        _trace(per_run, run_lengths=[1000, 1000, 2000, 1000]), label="m", model_path="m.onnx",
        node_domains={"MatMul_a": "", "MatMul_b": "", "Attention_c": "com.microsoft"}, warmup=1, contrib_ops=(),
    )
    assert profile.samples == 3 and profile.warmup == 1 and profile.runs_used == 2  # runs 1 and 3; the slow one is out
    by_type = {entry.op_type: entry for entry in profile.op_types}
    assert set(by_type) == {"MatMul", "Attention"} and profile.skipped == ["If"]  # If's subgraph kernels count instead
    # means over runs 1 and 3: MatMul_a 105, MatMul_b 25, Attention_c 55 (µs)
    assert by_type["MatMul"].ms == pytest.approx(0.130) and by_type["MatMul"].calls == 2
    assert by_type["Attention"].ms == pytest.approx(0.055) and by_type["Attention"].contrib
    assert not by_type["MatMul"].contrib
    assert profile.kernel_ms == pytest.approx(0.185)
    assert sum(entry.share for entry in profile.op_types) == pytest.approx(1.0)
    assert profile.contrib_ms == pytest.approx(0.055) and profile.contrib_share == pytest.approx(0.055 / 0.185, abs=1e-6)
    assert profile.executor_ms == pytest.approx(0.990) and profile.run_ms == pytest.approx(1.0)
    assert profile.kernel_coverage == pytest.approx(0.185 / 0.99, abs=1e-6)
    assert [node.name for node in profile.top_nodes] == ["MatMul_a", "Attention_c", "MatMul_b"]
    assert profile.top_nodes[0].input_shapes == [[1, 4]] and profile.top_nodes[0].origin == "model"
    assert profile.nodes_per_run == 3


def test_trace_nodes_onnxruntime_made_are_contrib_by_their_kernel_domain():
    per_run = [{"FusedMatMul_x": 10, "Gelu_y": 20, "Add_z": 5}] * 2
    profile = summarize_trace(
        _trace(per_run), label="m", model_path="m.onnx", node_domains={}, warmup=0, contrib_ops=("FusedMatMul", "Gelu"),
    )
    contrib = {entry.op_type: entry.contrib for entry in profile.op_types}
    assert contrib == {"FusedMatMul": True, "Gelu": True, "Add": False}
    assert {node.origin for node in profile.top_nodes} == {"onnxruntime"}
    assert profile.contrib_share == pytest.approx(30 / 35, abs=1e-6)


def test_trace_with_too_few_runs_is_one_line():
    with pytest.raises(TfoptError, match="fewer than the 3 warm-up runs"):
        summarize_trace(_trace([{"Add_a": 1}] * 2), label="m", model_path="m.onnx", node_domains={}, warmup=3, contrib_ops=())


def _profile(label, times: dict[str, float], contrib=()):
    total = sum(times.values())
    return ModelProfile(
        label=label, model_path=Path(f"{label}.onnx"), provider="CPUExecutionProvider", threads=0, samples=1, warmup=0,
        run_ms=total, executor_ms=total, kernel_ms=total, kernel_coverage=1.0, runs_used=1,
        contrib_ms=sum(ms for op, ms in times.items() if op in contrib), contrib_share=0.0, nodes_per_run=len(times),
        op_types=[OpTypeTime(op, ms, ms / total, 1.0, op in contrib) for op, ms in sorted(times.items(), key=lambda kv: -kv[1])],
        top_nodes=[],
    )


def test_compare_lists_removed_added_and_left():
    raw = _profile("raw", {"MatMul": 5.0, "Softmax": 1.0, "Add": 2.0, "Erf": 0.5})
    optimized = _profile("optimized", {"MatMul": 4.0, "MultiHeadAttention": 1.5, "BiasGelu": 0.2, "Cast": 0.1},
                         contrib=("MultiHeadAttention", "BiasGelu"))
    comparison = compare_profiles(raw, optimized)
    assert comparison.removed == ["Add", "Softmax", "Erf"]  # slowest first
    assert comparison.added == ["MultiHeadAttention", "BiasGelu", "Cast"]  # Cast: new in the fused graph too
    assert comparison.left == ["MatMul", "Cast"]
    assert comparison.speedup == pytest.approx(8.5 / 5.8, abs=1e-4)
    rows = {row.op_type: row for row in comparison.rows}
    assert rows["MatMul"].raw_ms == 5.0 and rows["MatMul"].optimized_ms == 4.0
    assert rows["Softmax"].optimized_calls == 0 and rows["MultiHeadAttention"].raw_ms == 0 and rows["MultiHeadAttention"].contrib


def _chain_model(path: Path, ops=("Sqrt", "Exp", "Abs"), with_contrib=True, axes=("batch", "sequence")) -> Path:
    """x -> Sqrt -> Exp -> Abs (-> com.microsoft FastGelu): nothing ONNX Runtime fuses away."""
    nodes, previous = [], "x"
    for index, op in enumerate(ops):
        nodes.append(helper.make_node(op, [previous], [f"t{index}"], name=f"my_{op.lower()}"))
        previous = f"t{index}"
    imports = [helper.make_opsetid("", 17)]
    if with_contrib:
        nodes.append(helper.make_node("FastGelu", [previous], ["y"], name="my_fastgelu", domain="com.microsoft"))
        imports.append(helper.make_opsetid("com.microsoft", 1))
    else:
        nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(axes))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(axes))],
    )
    onnx.save(helper.make_model(graph, opset_imports=imports), path)
    return path


def test_profile_model_counts_every_node_once_per_run(tmp_path):
    model = _chain_model(tmp_path / "chain.onnx")
    feed = {"x": np.abs(np.random.default_rng(0).standard_normal((4, 256))).astype(np.float32)}
    trace = tmp_path / "kept" / "trace.json"
    profile = profile_model(model, feed, samples=6, warmup=2, threads=1, trace_path=trace)
    assert profile.samples == 6 and profile.threads == 1
    assert {entry.op_type: entry.calls for entry in profile.op_types} == {"Sqrt": 1, "Exp": 1, "Abs": 1, "FastGelu": 1}
    assert {node.name for node in profile.top_nodes} == {"my_sqrt", "my_exp", "my_abs", "my_fastgelu"}
    assert {node.origin for node in profile.top_nodes} == {"model"}
    assert [entry.op_type for entry in profile.op_types if entry.contrib] == ["FastGelu"]
    assert sum(entry.ms for entry in profile.op_types) == pytest.approx(profile.kernel_ms, rel=1e-4)
    assert 0 < profile.kernel_ms <= profile.executor_ms * 1.05 and profile.executor_ms <= profile.run_ms * 1.05
    events = json.loads(trace.read_text())  # the raw trace was kept where asked
    assert sum(1 for e in events if e.get("name") == "model_run") == 8


def test_profile_model_refuses_what_onnxruntime_cannot_load(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(TfoptError, match="ONNX Runtime cannot load it"):
        profile_model(broken, {"x": np.zeros((1, 1), np.float32)}, samples=1, warmup=0)


def test_model_node_domains_reads_the_graph_only(tmp_path):
    assert model_node_domains(_chain_model(tmp_path / "c.onnx")) == {
        "my_sqrt": "", "my_exp": "", "my_abs": "", "my_fastgelu": "com.microsoft",
    }


def _decoder_inputs_model(path: Path) -> Path:
    """Inputs shaped like a GPT-2 export with past: ids, mask over past + new, positions, past_key_values."""
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, ["batch", 2, "past", 8]),
    ]
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["y"])], "dec", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "sequence"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_file_feed_past_inputs_get_the_past_length(tmp_path):
    feed = file_feed(_decoder_inputs_model(tmp_path / "dec.onnx"), 3, 1, 16)
    assert feed["input_ids"].shape == (3, 1)
    assert feed["attention_mask"].shape == (3, 17) and feed["attention_mask"].all()
    assert feed["position_ids"].tolist() == [[16]] * 3  # the next position after 16 past tokens
    assert feed["past_key_values.0.key"].shape == (3, 2, 16, 8) and feed["past_key_values.0.key"].dtype == np.float32


def test_file_feed_without_past(tmp_path):
    feed = file_feed(_chain_model(tmp_path / "c.onnx"), 2, 24, 0)
    assert feed["x"].shape == (2, 24)


# ----------------------------------------------------------------------------- the command


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_profile_of_an_onnx_file(tmp_path):
    model = _chain_model(tmp_path / "chain.onnx")
    result = _invoke("profile", str(model), "--batch-size", "2", "--sequence-length", "64", "--samples", "3", "--warmup", "1")
    assert result.exit_code == 0, result.output
    written = tmp_path / "chain.profile.json"
    data = json.loads(written.read_text())
    assert (data["batch_size"], data["sequence_length"], data["inputs"]) == (2, 64, {"x": [2, 64]})
    assert data["comparison"] is None and [p["label"] for p in data["profiles"]] == ["chain.onnx"]
    assert "FastGelu *" in result.stdout and f"written: {written}" in result.stdout
    as_json = _invoke("profile", str(model), "--samples", "2", "--json", "--output", str(tmp_path / "p.json"))
    assert json.loads(as_json.stdout)["profiles"][0]["samples"] == 2


def test_cli_profile_of_an_onnx_file_sizes_named_axes_by_the_largest_axis_sizes(tmp_path):
    model = _chain_model(tmp_path / "audio.onnx", ops=("Abs",), with_contrib=False, axes=("batch", "samples"))
    sized = _invoke("profile", str(model), "--samples", "1", "--warmup", "0", "--json", "--option", 'axis_sizes={"samples": [16, 48]}')
    assert sized.exit_code == 0, sized.output
    data = json.loads(sized.stdout)
    assert data["inputs"] == {"x": [1, 48]} and data["shape"] == {"batch": 1, "samples": 48}
    # checked as a run checks it (tfopt.feeds.axis_sizes_from): the same one-line errors
    not_a_mapping = CliRunner().invoke(main, ["profile", str(model), "--option", "axis_sizes=samples=50"])
    assert not_a_mapping.exit_code == 2
    assert not_a_mapping.stderr.strip() == (
        """tfopt: error: axis_sizes must map axis names to sizes, e.g. --option 'axis_sizes={"samples": [400, 800]}', got 'samples=50'"""
    )
    not_positive = CliRunner().invoke(main, ["profile", str(model), "--option", 'axis_sizes={"samples": [0]}'])
    assert not_positive.exit_code == 2 and "axis_sizes[samples] must be positive integers, got [0]" in not_positive.stderr


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing.onnx", "no such ONNX file or run directory"),
    (lambda tmp: tmp, "no report.json here"),
])
def test_cli_profile_bad_target_is_one_line(tmp_path, make, message):
    result = CliRunner().invoke(main, ["profile", str(make(tmp_path))])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def _pytorch_adapters():
    names = {entry_point.name for entry_point in importlib.metadata.entry_points(group="tfopt")}
    if "bert_pt" not in names:
        pytest.skip("needs the bert_pt adapter (PyTorch deployment)")


@pytest.fixture
def profiled_run(tiny_bert_runs):
    """tiny-bert's fp32 run, made with --profile (tests/conftest.py)."""
    return tiny_bert_runs["fp32"]


def test_run_profile_is_in_report_json(profiled_run):
    report = json.loads((profiled_run / "report.json").read_text())
    profile = report["profile"]
    assert report["stages"]["profile"]["seconds"] > 0 and report["options"]["profile"] is True
    assert [p["label"] for p in profile["profiles"]] == ["raw", "optimized"]
    assert profile["sequence_length"] == 16 and profile["inputs"]["input_ids"] == [1, 16]
    assert [p["model_path"] for p in profile["profiles"]] == ["exported.onnx", "optimized.onnx"]  # relative: the dir can move
    comparison = profile["comparison"]
    # what the fused graph no longer runs, read off report.json's own op counts (not off the profile)
    fused_types = set(report["fuse"]["op_counts"])
    assert "Softmax" in comparison["removed"] and "Softmax" not in fused_types
    assert {"MultiHeadAttention", "EmbedLayerNormalization"} <= set(comparison["added"])
    raw, optimized = profile["profiles"]
    assert optimized["contrib_share"] > raw["contrib_share"]
    assert {e["op_type"] for e in optimized["op_types"]} <= fused_types | {"FusedMatMul", "Gelu"}  # ORT may fuse a little more
    for entry in profile["profiles"]:
        assert sum(e["ms"] for e in entry["op_types"]) == pytest.approx(entry["kernel_ms"], rel=1e-3)
        assert sum(e["share"] for e in entry["op_types"]) == pytest.approx(1.0, abs=1e-3)
    assert (profiled_run / "report.html").is_file()


def test_cli_profile_of_a_run_dir_writes_profile_json(profiled_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(profiled_run, copy)  # the session's run stays as the run made it
    profiled_run = copy
    result = _invoke("-q", "profile", str(profiled_run), "--sequence-length", "8", "--samples", "3", "--keep-trace")
    assert result.exit_code == 0, result.output
    data = json.loads((profiled_run / "profile.json").read_text())
    assert data["sequence_length"] == 8 and data["comparison"]["removed"]
    assert data["feed"] == "bert_pt's make_dummy_inputs"
    assert "removed by fusion: " in result.stdout and "top " in result.stdout
    assert (profiled_run / "profile.raw.trace.json").is_file() and (profiled_run / "profile.optimized.trace.json").is_file()


def test_cli_profile_of_a_moved_run_dir_generates_inputs_from_the_graph(profiled_run, tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(profiled_run, copy)
    report = json.loads((copy / "report.json").read_text())
    report["source"] = str(tmp_path / "gone")  # the model directory the run came from no longer exists
    (copy / "report.json").write_text(json.dumps(report))
    result = _invoke("profile", str(copy), "--sequence-length", "8", "--samples", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["feed"].startswith("generated from the graph's inputs (bert_pt's make_dummy_inputs failed:")
    assert data["inputs"]["input_ids"] == [1, 8] and data["comparison"]["removed"]
    assert "generating them from the graph's inputs" in result.stderr  # said, not silent


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_bert_base_shape_op_type_times_add_up_to_the_kernel_total(tmp_path, exporter):
    """The issue's target, at bert-base's shape (12 layers, hidden 768, 12 heads; random weights), s=128.

    The op-type times must add up (5%) to the time ONNX Runtime's executor measured for the
    runs they come from, and the raw-vs-optimized comparison must name what fusion removed
    (measured on the shared 2-core machine: 98.0-99.6% at 1 and 2 threads).
    """
    _pytorch_adapters()
    from transformers import BertConfig, BertModel

    from tfopt.torch_kit import perturb_vector_params

    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=512)
    model = BertModel(config, add_pooling_layer=False).eval()
    perturb_vector_params(model)
    model.save_pretrained(tmp_path / "bert-base")
    out = tmp_path / "run"
    result = _invoke("-q", "run", "--plugin", "bert_pt", "--model", str(tmp_path / "bert-base"), "--exporter", exporter,
                     "--no-benchmark", "--batch-sizes", "1", "--sequence-lengths", "128", "--output", str(out))
    assert result.exit_code in (0, 1), result.output  # parity is not what this test is about
    result = _invoke("-q", "profile", str(out), "--sequence-length", "128", "--samples", "10", "--json")
    data = json.loads(result.stdout)
    for entry in data["profiles"]:
        total = sum(e["ms"] for e in entry["op_types"])
        print(f"{exporter} {entry['label']}: op types {total:.3f} ms, executor {entry['executor_ms']:.3f} ms, "
              f"{100 * total / entry['executor_ms']:.1f}%; contrib {100 * entry['contrib_share']:.1f}%")
        assert abs(total - entry["executor_ms"]) <= 0.05 * entry["executor_ms"]
        assert sum(e["share"] for e in entry["op_types"]) == pytest.approx(1.0, abs=1e-3)
    report = json.loads((out / "report.json").read_text())
    removed = set(data["comparison"]["removed"])
    assert removed and not removed & set(report["fuse"]["op_counts"])  # removed: really gone from the fused graph
    assert not report["fuse"]["missing"], report["fuse"]["missing"]  # fully fused, so attention's Softmax is gone too
    assert "Softmax" in removed
