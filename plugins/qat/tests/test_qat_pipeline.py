"""The whole qat pipeline on tiny-bert and an easy task: conformance, Q/DQ export, CPU structure, accuracy."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qat_cases import TINY_OPTIONS, easy_rows, write_csv
from tfopt.results import RunContext
from tfopt.testing import check_adapter

QUANTIZED_PER_LAYER = 6  # query, key, value, attention output, intermediate, output
LAYERS = 2  # tiny-bert


@pytest.fixture(scope="module")
def train_calls() -> list:
    """train() calls during the qat_run pipeline."""
    return []


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, train_calls):
    root = tmp_path_factory.mktemp("qat")
    data = write_csv(root / "easy.csv", easy_rows(240))
    options = {**TINY_OPTIONS, "precision": "int8", "data": str(data)}
    from tfopt_qat import train as train_module

    real_train = train_module.train
    with pytest.MonkeyPatch.context() as patch:  # every stage asks for the trained models: one train() per run
        patch.setattr(train_module, "train", lambda *args, **kwargs: train_calls.append(args) or real_train(*args, **kwargs))
        outcome = check_adapter("qat", source="tiny-bert", options=options, work_dir=root)  # the conformance kit
    return outcome, root / "run", options


@pytest.fixture(scope="module")
def trained(qat_run):
    from tfopt_qat.train import TrainConfig, train

    _, run_dir, options = qat_run
    return train(TrainConfig.from_options("tiny-bert", options), run_dir)  # finds the finished checkpoints


def _ops(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output}


def _held_out(options):
    from transformers import AutoTokenizer

    from tfopt_qat.data import load_dataset
    from tfopt_qat.model import realweights_dir

    data = load_dataset(options["data"])
    tokenizer = AutoTokenizer.from_pretrained(realweights_dir())
    feed = tokenizer(data.eval_texts, padding=True, truncation=True, max_length=options["max_length"], return_tensors="np")
    return {k: v.astype(np.int64) for k, v in feed.items()}, np.array(data.eval_labels)


def _accuracy(path: Path, feed, labels) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    logits = session.run(None, {k: v for k, v in feed.items() if k in names})[0]
    return float((logits.argmax(-1) == labels).mean())


def test_conformance_and_report(qat_run, train_calls):
    outcome, run_dir, _ = qat_run
    assert outcome.passed and outcome.report["status"] == "passed"
    assert outcome.report["convert_precision"]["precision"] == "int8"
    engines = {row["engine"] for row in outcome.report["benchmark"]["rows"]}
    assert {"ort:raw", "ort:tfopt", "ort:fp32", "ort:int8-ptq-dynamic"} <= engines
    assert (run_dir / "qat-checkpoints" / "fp32.pt").is_file() and (run_dir / "qat-checkpoints" / "qat.pt").is_file()
    assert len(train_calls) == 1  # export, fuse, dummy inputs and verify share the run's trained models


def test_accuracy_bookkeeping_matches_an_independent_count(qat_run):
    import json

    _, run_dir, options = qat_run
    table = json.loads((run_dir / "qat-accuracy.json").read_text())
    rows = {row["engine"]: row for row in table["engines"]}
    assert set(rows) == {"torch:fp32", "onnx:fp32", "torch:qat-fakequant", "onnx:int8-qat-export", "onnx:int8-qat", "onnx:int8-ptq-dynamic"}
    feed, labels = _held_out(options)
    assert table["dataset"]["eval_examples"] == len(labels) == 60
    for engine, file in (("onnx:fp32", "optimized.fp32.onnx"), ("onnx:int8-qat", "optimized.onnx"),
                         ("onnx:int8-ptq-dynamic", "optimized.fp32.int8.onnx"), ("onnx:int8-qat-export", "exported.onnx")):
        assert rows[engine]["accuracy"] == pytest.approx(_accuracy(run_dir / file, feed, labels)), engine
    assert rows["torch:fp32"]["accuracy"] >= 0.9  # the task was learned: the comparison means something
    assert rows["onnx:int8-qat"]["accuracy"] >= rows["torch:fp32"]["accuracy"] - 0.01
    assert table["passed"] is True


def test_export_has_qdq_on_every_encoder_linear_and_dynamic_axes(qat_run):
    _, run_dir, options = qat_run
    model = onnx.load(str(run_dir / "exported.onnx"))
    graph = model.graph
    producers = _producers(graph)
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    quantized = 0
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        a, b = (producers.get(name) for name in node.input)
        if b is not None and b.op_type == "DequantizeLinear" and b.input[0] in inits:
            weight, scale = inits[b.input[0]], inits[b.input[1]]
            assert weight.dtype == np.int8 and weight.ndim == 2 and scale.shape == (weight.shape[1],)
            assert [attr.i for attr in b.attribute if attr.name == "axis"] == [1]
            assert np.abs(weight).max() <= 127
            assert a.op_type == "DequantizeLinear" and producers[a.input[0]].op_type == "QuantizeLinear"
            assert inits[a.input[2]].dtype == np.uint8
            quantized += 1
    assert quantized == QUANTIZED_PER_LAYER * LAYERS
    consumers = {name: node.op_type for node in graph.node for name in node.input}
    float_weights = {consumers.get(n) for n, i in inits.items() if i.dtype == np.float32 and i.ndim == 2}
    assert float_weights <= {"Gemm", "Gather"}  # only the pooler, the classifier and the embedding tables stay fp32
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_param, value.name
    session = ort.InferenceSession(str(run_dir / "exported.onnx"), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 5), (3, 11)):
        feed = {i.name: np.ones((batch, length), np.int64) for i in session.get_inputs()}
        assert session.run(None, feed)[0].shape == (batch, 2)


def test_qdq_computes_what_fake_quant_trained(qat_run, trained):
    import torch

    _, run_dir, options = qat_run
    feed, _ = _held_out(options)
    tensors = {k: torch.from_numpy(v) for k, v in feed.items()}
    with torch.inference_mode():
        fake_quant = trained.qat(**tensors).logits.numpy()
        float_weights = trained.fp32(**tensors).logits.numpy()
    for file in ("exported.onnx", "optimized.onnx"):
        session = ort.InferenceSession(str(run_dir / file), providers=["CPUExecutionProvider"])
        logits = session.run(None, feed)[0]
        scale = np.abs(fake_quant).max()
        assert np.abs(logits - fake_quant).max() <= 1e-4 * scale, file
    assert np.abs(fake_quant - float_weights).max() > 1e-3 * np.abs(float_weights).max()  # QAT is not the fp32 model


def test_cpu_target_fuses_and_runs_integer_matmuls(qat_run, tmp_path):
    _, run_dir, _ = qat_run
    final = run_dir / "optimized.onnx"
    ops = _ops(final)
    assert ops["EmbedLayerNormalization"] == 1 and ops["MultiHeadAttention"] == LAYERS
    assert ops["SkipLayerNormalization"] == 2 * LAYERS and ops["BiasGelu"] == LAYERS
    graph = onnx.load(str(final)).graph
    producers = _producers(graph)
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == QUANTIZED_PER_LAYER * LAYERS
    assert all(producers[i].op_type == "DequantizeLinear" for n in matmuls for i in n.input)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(str(final), options, providers=["CPUExecutionProvider"])
    ort_ops = _ops(tmp_path / "ort.onnx")
    assert ort_ops["MatMulIntegerToFloat"] == QUANTIZED_PER_LAYER * LAYERS, ort_ops
    assert ort_ops["MatMul"] == 0 and ort_ops["DequantizeLinear"] == 0


def test_broken_int8_scales_fail_verification(qat_run, trained, tmp_path):
    """Activation scales 100x too small saturate every quantized input: the task check must fail."""
    from tfopt.graph import load_model, save_model
    from tfopt_qat.fakequant import trained_quantization
    from tfopt_qat.qdq import insert_qdq
    from tfopt_qat.verify import verify_task

    outcome, run_dir, options = qat_run
    work = tmp_path / "run"
    shutil.copytree(run_dir, work)
    quants = trained_quantization(trained.qat)
    for quant in quants:
        quant.input_scale /= 100.0
    model = load_model(work / "optimized.qat-float.onnx")
    insert_qdq(model, quants)
    save_model(model, work / "broken.onnx")
    ctx = RunContext(family="qat", source="tiny-bert", work_dir=work, options=dict(options))
    inputs = [dict(zip(("input_ids", "attention_mask", "token_type_ids"), (np.ones((1, 6), np.int64), np.ones((1, 6), np.int64), np.zeros((1, 6), np.int64))))]
    result = verify_task(ctx, trained, outcome.report and None, work / "broken.onnx", inputs)
    assert not result.passed
    assert any("below torch fp32" in w for w in ctx.results["warnings"])
    assert "below torch fp32" in result.failure  # the run's verdict names the accuracy drop, not a max abs diff
    good = verify_task(RunContext(family="qat", source="tiny-bert", work_dir=work, options=dict(options)), trained, None, work / "optimized.onnx", inputs)
    assert good.passed


def test_cuda_target_qordered_structure(trained, tmp_path):
    """QOrdered* has no CPU kernel: ONNX Runtime must resolve the graph and stop only at the missing kernel."""
    from tfopt.errors import TfoptError
    from tfopt_qat.qordered import build_qordered, schema_check

    model = build_qordered(trained)
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["QOrderedAttention"] == LAYERS and ops["QOrderedMatMul"] == 3 * LAYERS
    assert ops["QOrderedLayerNormalization"] == 2 * LAYERS and ops["QOrderedGelu"] == LAYERS
    assert ops["MatMul"] == 0 and ops["QuantizeWithOrder"] == 1 and ops["DequantizeWithOrder"] == 1
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QOrderedMatMul":
            assert inits[node.input[2]].dtype == np.int8 and inits[node.input[3]].ndim == 1  # per-channel trained scales
    path = tmp_path / "qordered.onnx"
    onnx.save(model, str(path))
    assert "Could not find an implementation" in schema_check(path)
    # the check is real: a schema violation (float data where int8 belongs) is refused
    gelu = next(node for node in model.graph.node if node.op_type == "QOrderedGelu")
    gelu.input[0] = "embeddings"
    onnx.save(model, str(path))
    with pytest.raises(TfoptError, match="refuses the QOrdered graph"):
        schema_check(path)


def test_benchmark_script_times_the_three_engines(qat_run, tmp_path):
    import subprocess
    import sys

    _, run_dir, _ = qat_run
    script = Path(__file__).resolve().parents[3] / "scripts" / "benchmark_qat.py"
    done = subprocess.run([sys.executable, str(script), "--run-dir", str(run_dir), "--no-bert-base", "--repeat", "2",
                           "--markdown", str(tmp_path / "b.md")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in (tmp_path / "b.md").read_text().splitlines() if line.startswith("| qat run")]
    assert [row.split("|")[2].strip() for row in rows] == ["fp32", "int8 QAT (Q/DQ, trained scales)", "int8 PTQ dynamic"]
    assert all(float(row.split("|")[3]) > 0 for row in rows)
    assert "avx" in done.stdout or "none of" in done.stdout  # the CPU's instruction sets are printed


def test_cuda_target_run_reports_the_qdq_accuracy(qat_run, tmp_path):
    import json

    from tfopt.pipeline import run_pipeline
    from tfopt.testing import isolated_plugin_manager

    _, run_dir, options = qat_run
    work = tmp_path / "cuda"
    shutil.copytree(run_dir / "qat-checkpoints", work / "qat-checkpoints")  # trained already: nothing to train
    ctx = RunContext(family="qat", source="tiny-bert", work_dir=work, options={**options, "target": "cuda", "benchmark": False})
    outcome = run_pipeline(isolated_plugin_manager(tmp_path), "qat", ctx)
    assert outcome.passed
    assert _ops(work / "optimized.onnx")["QOrderedAttention"] == LAYERS
    table = json.loads((work / "qat-accuracy.json").read_text())
    assert "onnx:int8-qat" not in {row["engine"] for row in table["engines"]}  # no CPU kernel: not claimed
    assert table["criterion"].startswith("onnx:int8-qat-export")
    assert any("structurally only" in line for line in outcome.report["warnings"])


def test_tfopt_run_without_precision_ships_int8(qat_run, tmp_path):
    """`tfopt run --plugin qat` with no --precision is a QAT run: every stage sees int8."""
    import json

    from click.testing import CliRunner

    from tfopt.cli import main

    _, run_dir, options = qat_run
    work = tmp_path / "default"
    shutil.copytree(run_dir / "qat-checkpoints", work / "qat-checkpoints")  # trained already: nothing to train
    args = ["-q", "run", "--plugin", "qat", "--model", "tiny-bert", "--no-benchmark", "--output", str(work)]
    for key, value in options.items():
        if key != "precision":
            args += ["--option", f"{key}={value}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((work / "report.json").read_text())
    assert report["options"]["precision"] == "int8"
    assert report["convert_precision"]["precision"] == "int8" and report["verify"]["precision"] == "int8"
    assert _ops(work / "optimized.onnx")["DequantizeLinear"] >= QUANTIZED_PER_LAYER * LAYERS  # the Q/DQ int8 model
