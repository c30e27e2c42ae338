"""scripts/_machine_limits.py: the within-round ratios, the streamed-bytes count, and that the limits measure."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import _machine_limits as limits  # noqa: E402


def test_ratios_are_taken_within_each_round():
    # round 2 is slow for everyone (another process): per-round ratios stay 0.5, a ratio of medians would not
    per_round = {"base": [1.0, 4.0, 1.0], "fast": [0.5, 2.0, 0.5], "aa": [1.1, 3.6, 1.0]}
    summary = limits.ratios(per_round, "base")
    assert summary["fast"].ratio == 0.5 and summary["fast"].low == summary["fast"].high == 0.5
    assert summary["base"].ratio == 1.0 and summary["base"].median_ms == 1000.0
    assert summary["aa"].low == 0.9 and summary["aa"].high == 1.1 and summary["aa"].ratio == 1.0


def test_rounds_interleave_and_count_calls():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    medians = limits.rounds(calls, rounds=3, per_round=2, warmup=1)
    assert [len(v) for v in medians.values()] == [3, 3]
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3


def test_streamed_bytes_leave_out_tables_only_gathered(tmp_path):
    table = numpy_helper.from_array(np.zeros((100, 8), np.float32), "table")  # Gather only: a row per token
    tied = numpy_helper.from_array(np.zeros((50, 8), np.float32), "tied")  # Gather and a MatMul: read in full
    weight = numpy_helper.from_array(np.zeros((8, 8), np.uint8), "w8")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"]),
            helper.make_node("Gather", ["tied", "ids"], ["e2"]),
            helper.make_node("Transpose", ["tied"], ["tied_t"]),
            helper.make_node("MatMul", ["e2", "tied_t"], ["y"]),
            helper.make_node("Identity", ["w8"], ["z"]),
        ],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("e", "y")], [table, tied, weight],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    assert limits.streamed_weight_bytes(path) == 50 * 8 * 4 + 8 * 8


def test_machine_limits_measure_something():
    assert limits.measure_sgemm(m=64, k=64, n=64, seconds=0.05) > 0.1
    assert limits.measure_bandwidth(gib=0.01, seconds=0.05) > 0.1
    assert limits.cpu_isa()


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.slow
def test_benchmark_scripts_run_at_tiny_size(tmp_path):
    """Both benchmark scripts end to end at tiny shapes: the limits line, the A/A row, int8/int4 engines, quality."""
    import subprocess

    env = dict(os.environ, TFOPT_CACHE_DIR=str(tmp_path / "cache"))
    gpt2 = subprocess.run(
        [sys.executable, str(SCRIPTS / "benchmark_gpt2.py"), "--model", "tiny-gpt2", "--quality-model", "stdlib-gpt2-tiny",
         "--batch", "1", "--past", "8", "--rounds", "2", "--per-round", "2", "--markdown", str(tmp_path / "gpt2.md")],
        capture_output=True, text=True, timeout=1800, env=env,
    )
    assert gpt2.returncode == 0, gpt2.stderr[-2000:]
    text = (tmp_path / "gpt2.md").read_text()
    for needle in ("GFLOP/s", "GB/s", "ort:raw (A/A)", "ort:tfopt int8 |", "ort:tfopt int4 |", "top-1 agreement", "16/16"):
        assert needle in text, needle
    bert = subprocess.run(
        [sys.executable, str(SCRIPTS / "benchmark_bert.py"), "--layers", "1", "--hidden", "32", "--heads", "2", "--seq", "8",
         "--rounds", "2", "--per-round", "2", "--markdown", str(tmp_path / "bert.md")],
        capture_output=True, text=True, timeout=1800, env=env,
    )
    assert bert.returncode == 0, bert.stderr[-2000:]
    text = (tmp_path / "bert.md").read_text()
    for needle in ("of sgemm", "ort:raw (A/A)", "ort:tfopt int8", "ort:tfopt (packed Attention)", "ort:onnxscript"):
        assert needle in text, needle
