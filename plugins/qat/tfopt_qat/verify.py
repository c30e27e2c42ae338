"""Task-level verification (accuracy, macro F1, agreement on the held-out split) and the benchmark.

A quantized model is judged on the task it was trained for: its accuracy must stay within
``accuracy_tolerance`` points (default 1) of the fine-tuned fp32 model's. Logit differences are
kept too (``overall``: the final ONNX model against the torch model it came from, on the dummy
inputs), but do not decide: int8 moves every logit a little by design.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from tfopt import feeds as feeds_module
from tfopt.bench import latency_row, ort_session, time_interleaved
from tfopt.results import BenchResult, ExportResult, RunContext, VerifyResult
from tfopt.verify import TOLERANCES, compare_cases, diff_stats

from .evaluate import accuracy_f1, onnx_logits, torch_logits

DEFAULT_BENCH_SEQUENCE_LENGTHS = (32, 128)


def ptq_path(work: Path) -> Path:
    """Where convert_precision's PTQ dynamic comparison lands (the host's name for int8 of the fp32 model)."""
    from tfopt.precision import output_path_for

    from .hooks import FP32_FUSED

    return output_path_for(work / FP32_FUSED, "int8")


def _engines(ctx: RunContext, model_path: Path) -> dict[str, tuple[str, object]]:
    """label -> ("torch", model) or ("onnx", path), in table order; missing files are left out."""
    from .hooks import FP32_FUSED, QDQ_EXPORT

    work = Path(ctx.work_dir)
    engines = {"torch:fp32": ("torch", "fp32"), "onnx:fp32": ("onnx", work / FP32_FUSED)}
    if ctx.option("precision", "fp32") == "int8":
        engines["torch:qat-fakequant"] = ("torch", "qat")
        engines["onnx:int8-qat-export"] = ("onnx", work / QDQ_EXPORT)
        if ctx.option("target", "cpu") != "cuda":  # the QOrdered* model has no CPU kernels
            engines["onnx:int8-qat"] = ("onnx", model_path)
        ptq = ptq_path(work)
        if ptq.is_file():
            engines["onnx:int8-ptq-dynamic"] = ("onnx", ptq)
    return engines


def accuracy_table(ctx: RunContext, run, model_path: Path) -> list[dict]:
    """One row per engine: accuracy, macro F1, agreement with torch fp32, logit diffs against its torch parent."""
    labels = np.asarray(run.prepared.dataset.eval_labels)
    num_labels = run.prepared.dataset.num_labels
    logits: dict[str, np.ndarray] = {}
    rows = []
    for label, (kind, what) in _engines(ctx, model_path).items():
        ctx.progress(f"held-out accuracy: {label} ...")
        if kind == "torch":
            logits[label] = torch_logits(run.fp32 if what == "fp32" else run.qat, run.prepared)
        else:
            logits[label] = onnx_logits(what, run.prepared)
        predictions = logits[label].argmax(-1)
        accuracy, f1 = accuracy_f1(labels, predictions, num_labels)
        parent = "torch:qat-fakequant" if "qat" in label and label != "torch:qat-fakequant" else "torch:fp32"
        stats = diff_stats(logits[parent], logits[label])
        rows.append({
            "engine": label,
            "model": str(what) if kind == "onnx" else f"torch {what}",
            "accuracy": accuracy,
            "macro_f1": f1,
            "agreement_with_fp32": float((predictions == logits["torch:fp32"].argmax(-1)).mean()),
            "logits_compared_with": parent,
            **vars(stats),
        })
    return rows


def _write_json(data, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def verify_task(ctx: RunContext, run, exported: ExportResult, model_path: Path, inputs) -> VerifyResult:
    from .hooks import ACCURACY_FILE, DEFAULT_ACCURACY_TOLERANCE

    start = time.perf_counter()
    precision = ctx.option("precision", "fp32")
    tolerance = float(ctx.option("accuracy_tolerance", DEFAULT_ACCURACY_TOLERANCE))
    rows = accuracy_table(ctx, run, model_path)
    by_engine = {row["engine"]: row for row in rows}
    cuda = ctx.option("target", "cpu") == "cuda"
    final_label = ("onnx:int8-qat-export" if cuda else "onnx:int8-qat") if precision == "int8" else "onnx:fp32"
    fp32_accuracy, final_accuracy = by_engine["torch:fp32"]["accuracy"], by_engine[final_label]["accuracy"]
    drop = 100.0 * (fp32_accuracy - final_accuracy)
    passed = drop <= tolerance + 1e-9
    warnings = ctx.results.setdefault("warnings", [])
    failures = []  # why it failed, for the run's one-line verdict (also kept as warnings)
    if not passed:
        failures.append(f"{final_label} accuracy {100 * final_accuracy:.1f}% is {drop:.1f} points below torch fp32's "
                        f"{100 * fp32_accuracy:.1f}% (tolerance {tolerance:g})")
    ptq = by_engine.get("onnx:int8-ptq-dynamic")
    if ptq and ptq["accuracy"] > final_accuracy:
        warnings.append(f"PTQ dynamic int8 is more accurate than QAT int8 here ({100 * ptq['accuracy']:.1f}% vs {100 * final_accuracy:.1f}%)")
    # the final model against its torch parent on the dummy inputs: reported, not decisive for int8
    from .hooks import QDQ_EXPORT

    session = ort_session(Path(ctx.work_dir) / QDQ_EXPORT if cuda and precision == "int8" else model_path)
    parent = run.qat if precision == "int8" else run.fp32
    references, actuals, labels = [], [], []
    import torch

    for feed in inputs:
        with torch.inference_mode():
            references.append(parent(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy())
        actuals.append(session.run(None, feeds_module.session_feed(session, feed))[0])
        labels.append({"batch_size": int(feed["input_ids"].shape[0]), "sequence_length": int(feed["input_ids"].shape[1])})
    logits_check = compare_cases(references, actuals, labels=labels, precision=precision,
                                 reference_name="torch", tolerance=float("inf") if precision == "int8" else TOLERANCES["fp32"])
    if precision == "fp32" and not logits_check.passed:
        passed = False
        failures.append(f"onnx:fp32 logits differ from torch's by {logits_check.overall.max_abs:.2g} (> {TOLERANCES['fp32']:g})")
    warnings.extend(failures)
    table = {
        "dataset": run.prepared.dataset.describe(),
        "criterion": f"{final_label} accuracy within {tolerance:g} points of torch:fp32",
        "passed": passed,
        "engines": rows,
    }
    _write_json(table, Path(ctx.work_dir) / ACCURACY_FILE)
    ctx.add_output("accuracy", Path(ctx.work_dir) / ACCURACY_FILE)
    for row in rows:
        ctx.progress(f"  {row['engine']:<24} accuracy {100 * row['accuracy']:5.1f}%  macro F1 {100 * row['macro_f1']:5.1f}  "
                     f"agreement with fp32 {100 * row['agreement_with_fp32']:5.1f}%")
    return VerifyResult(
        passed=passed,
        tolerance=tolerance,
        precision=precision,
        reference="torch:fp32 held-out accuracy (tolerance in accuracy points); overall = final logits vs torch",
        overall=logits_check.overall,
        cases=rows + logits_check.cases,
        seconds=time.perf_counter() - start,
        histogram=logits_check.histogram,
        failure="; ".join(failures) or None,
    )


def benchmark_engines(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    """ONNX Runtime latency of the export, the final model, the fp32 model and PTQ, interleaved."""
    from .hooks import FP32_FUSED

    start = time.perf_counter()
    work = Path(ctx.work_dir)
    engines = dict(models)
    if ctx.option("target", "cpu") == "cuda" and ctx.option("precision", "fp32") == "int8":
        engines.pop("ort:tfopt", None)  # QOrdered*: no CPU kernels, nothing to time here
    if Path(models.get("ort:tfopt", "")) != work / FP32_FUSED:
        engines["ort:fp32"] = work / FP32_FUSED
    if ptq_path(work).is_file():
        engines["ort:int8-ptq-dynamic"] = ptq_path(work)
    batch_sizes = feeds_module.int_tuple(ctx.option("bench_batch_sizes", (1,)), "bench_batch_sizes")
    lengths = feeds_module.int_tuple(ctx.option("bench_sequence_lengths", DEFAULT_BENCH_SEQUENCE_LENGTHS), "bench_sequence_lengths")
    sessions = {label: ort_session(path) for label, path in engines.items()}
    grid = feeds_module.dummy_feeds(exported.model_path, batch_sizes=batch_sizes, sequence_lengths=lengths, padded=False)
    rows = []
    for (batch, length), feed in zip([(b, s) for b in batch_sizes for s in lengths], grid):
        ctx.progress(f"benchmarking batch {batch}, sequence {length}: {', '.join(sessions)} ...")
        calls = {}
        for label, session in sessions.items():
            prepared = feeds_module.session_feed(session, feed)
            calls[label] = (lambda s=session, p=prepared: s.run(None, p))
        times = time_interleaved(calls, warmup=int(ctx.option("bench_warmup", 3)), repeat=int(ctx.option("bench_repeat", 20)))
        rows.extend(latency_row(label, batch, length, seconds) for label, seconds in times.items())
    return BenchResult(rows=rows, device="cpu", seconds=time.perf_counter() - start)
