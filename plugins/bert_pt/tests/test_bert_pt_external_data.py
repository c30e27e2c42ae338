"""`tfopt run --precision fp16|int8` on an export whose weights are external data.

torch's dynamo exporter writes ``exported.onnx.data`` for real-size models (bert-base and
up); tiny models only do so when the adapter's threshold is lowered, as here. The slow
test runs a random-weight bert-base through both precisions unforced.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from tfopt.cli import main
from tfopt.verify import TOLERANCES


def _locations(model_path: Path) -> set[str]:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return {entry.value for tensor in graph.initializer for entry in tensor.external_data if entry.key == "location"}


def _ops(model_path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(model_path), load_external_data=False).graph.node)


def _const_b_matmuls(model_path: Path) -> int:
    model = onnx.load(str(model_path), load_external_data=False)
    weights = {tensor.name for tensor in model.graph.initializer}
    return sum(1 for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights)


@pytest.fixture
def forced_external_data(monkeypatch):
    """The adapter exports with external data from 0 bytes on, and tfopt writes it from 0 on."""
    import tfopt_bert_pt.export as export
    from tfopt.graph import io as graph_io

    monkeypatch.setattr(export, "EXTERNAL_DATA_THRESHOLD", 0)
    monkeypatch.setattr(graph_io, "EXTERNAL_DATA_THRESHOLD", 0)


def test_run_fp16_then_int8_of_an_external_data_export(forced_external_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # the run's files are found from its directory, not the working one
    result = CliRunner().invoke(
        main,
        ["run", "--plugin", "bert_pt", "--model", "tiny-bert", "--exporter", "dynamo", "--precision", "fp16",
         "--no-benchmark", "--batch-sizes", "1,2", "--sequence-lengths", "5,16", "--output", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in out.iterdir())
    assert names == [
        "exported.onnx", "exported.onnx.data", "optimized.fp16.onnx", "optimized.fp16.onnx.data",
        "optimized.onnx", "optimized.onnx.data", "report.html", "report.json",
    ]
    for name in ("exported.onnx", "optimized.onnx", "optimized.fp16.onnx"):
        assert _locations(out / name) == {name + ".data"}
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed" and report["verify"]["precision"] == "fp16"
    assert 1e-5 < report["verify"]["overall"]["max_abs"] <= TOLERANCES["fp16"]
    fp16_weights = [t for t in onnx.load(str(out / "optimized.fp16.onnx")).graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16_weights) > 20

    # int8 of the same fused model, from its run directory
    from tfopt.precision import convert

    before = {path.name: path.read_bytes() for path in out.iterdir()}
    int8 = convert(out / "optimized.onnx", "int8").model_path
    assert _locations(int8) == {"optimized.int8.onnx.data"}
    assert _ops(int8)["MatMulInteger"] == _const_b_matmuls(out / "optimized.onnx") == 12
    assert {name: (out / name).read_bytes() for name in before} == before


def _save_random_bert_base(folder: Path) -> Path:
    from tfopt_bert_pt.models import random_bert

    random_bert().save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_run_of_bert_base_size_with_the_default_exporter(tmp_path_factory, tmp_path, precision):
    """bert-base shape (12 layers, hidden 768), random weights, dynamo export: external data unforced."""
    source = tmp_path_factory.getbasetemp() / "random-bert-base"
    if not (source / "config.json").exists():
        _save_random_bert_base(source)
    out = tmp_path / "out"
    start = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tfopt"), "run", "--plugin", "bert_pt", "--model", str(source), "--precision", precision,
         "--no-benchmark", "--batch-sizes", "1,2", "--sequence-lengths", "8,128", "--output", str(out)],
        capture_output=True, text=True, timeout=1800,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    final = out / f"optimized.{precision}.onnx"
    assert (out / "exported.onnx.data").is_file() and (out / "optimized.onnx.data").is_file()
    assert _locations(final) == {final.name + ".data"}
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed"
    max_abs = report["verify"]["overall"]["max_abs"]
    assert max_abs <= TOLERANCES[precision]
    ops = _ops(final)
    if precision == "int8":
        assert ops["MatMulInteger"] == 6 * 12
    print(f"\nbert-base {precision}: tfopt run {seconds:.1f} s, convert {report['convert_precision']['seconds']:.1f} s, "
          f"max abs vs torch {max_abs:.3g}, p99 {report['verify']['overall']['p99_abs']:.3g}")
