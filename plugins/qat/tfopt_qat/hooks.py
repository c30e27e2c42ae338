"""The qat adapter's hooks: train, export, fuse with trained int8 scales, verify on the task, benchmark.

Files in the output directory (``--precision int8``; fp32 writes the first two only):

    qat-checkpoints/          fp32.pt, qat.pt (and *.partial.pt while a stage runs): resumable
    exported.fp32.onnx        the fine-tuned fp32 classifier (logits)
    optimized.fp32.onnx       ... fused (the fp32 baseline, and the source of PTQ)
    optimized.fp32.int8.onnx  ... ONNX Runtime's dynamic quantization of it (PTQ, for comparison)
    exported.qat-float.onnx   the QAT model's float weights, no quantization
    exported.onnx             ... with the trained Q/DQ on every encoder MatMul (the QAT export)
    optimized.qat-float.onnx  ... fused
    optimized.onnx            ... with the trained Q/DQ on the fused graph's MatMuls (the final model)
    qat-accuracy.json         the accuracy table verify computed
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tfopt import hookimpl
from tfopt.errors import TfoptError
from tfopt.results import (
    BenchResult, ExportResult, FuseResult, IOSpec, ModelInfo, PrecisionResult, RunContext, VerifyResult,
)
from tfopt.run_cache import PerRun

_TRAINED: PerRun = PerRun()
FP32_EXPORT, QAT_FLOAT_EXPORT, QDQ_EXPORT = "exported.fp32.onnx", "exported.qat-float.onnx", "exported.onnx"
FP32_FUSED, QAT_FLOAT_FUSED, FINAL = "optimized.fp32.onnx", "optimized.qat-float.onnx", "optimized.onnx"
ACCURACY_FILE = "qat-accuracy.json"
DEFAULT_ACCURACY_TOLERANCE = 1.0  # points of accuracy int8 may lose against fp32


DEFAULT_PRECISION = "int8"  # what the adapter is for; --precision fp32 stops after the fp32 fine-tune


def _precision(ctx: RunContext) -> str:
    if ctx.option("precision") is None:  # no --precision: the run (every later stage) is int8
        ctx.options["precision"] = DEFAULT_PRECISION
    precision = ctx.options["precision"]
    if precision not in ("fp32", "int8"):
        raise TfoptError(f"the qat adapter writes int8 (QAT) or fp32 (fine-tuned only) models, not {precision}")
    return precision


def trained(ctx: RunContext):
    """This run's trained models (training, or loading the finished checkpoints, on first use)."""
    from .train import TrainConfig, train

    config = TrainConfig.from_options(ctx.source, ctx.options)
    with_qat = _precision(ctx) == "int8"
    key = (json.dumps(vars(config), sort_keys=True, default=str), with_qat)
    return _TRAINED.get(ctx, key, lambda: train(config, Path(ctx.work_dir), ctx.progress, with_qat=with_qat))


def _info(model) -> ModelInfo:
    config = model.config
    return ModelInfo(model_type=config.model_type, num_heads=config.num_attention_heads,
                     hidden_size=config.hidden_size, num_layers=config.num_hidden_layers)


def _quants(run):
    from .fakequant import trained_quantization

    return trained_quantization(run.qat)


def _write_qdq(source: Path, output: Path, quants, reference: Path, ctx: RunContext):
    """``source`` (float) plus the trained Q/DQ, validated at int8 against ``reference`` before it is kept."""
    from tfopt.graph import load_model
    from tfopt.graph.validate import write_validated

    from .qdq import insert_qdq

    def build(skip):
        model = load_model(source)
        insert_qdq(model, quants)
        return model, None, []

    return write_validated(build, output, reference, refuse=source, precision="int8",
                           validate=bool(ctx.option("validate", True)), progress=ctx.progress)


@hookimpl(specname="export")
def export_hook(ctx: RunContext) -> ExportResult:
    from .fakequant import strip_qat
    from .onnx_export import export_logits

    start = time.perf_counter()
    run = trained(ctx)
    work = Path(ctx.work_dir)
    ctx.progress("exporting the fine-tuned fp32 classifier ...")
    names = export_logits(run.fp32, work / FP32_EXPORT)
    path = work / FP32_EXPORT
    ctx.add_output("exported_fp32", path)
    if run.qat is not None:
        ctx.progress("exporting the QAT model with its trained Q/DQ ...")
        export_logits(strip_qat(run.qat), work / QAT_FLOAT_EXPORT)
        ctx.add_output("exported_qat_float", work / QAT_FLOAT_EXPORT)
        _write_qdq(work / QAT_FLOAT_EXPORT, work / QDQ_EXPORT, _quants(run), work / QAT_FLOAT_EXPORT, ctx)
        path = work / QDQ_EXPORT
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
    return ExportResult(
        model_path=path,
        io=IOSpec(inputs={name: "int64" for name in names}, outputs=["logits"], dynamic_axes=dynamic),
        info=_info(run.fp32),
        exporter="legacy",
        seconds=time.perf_counter() - start,
    )


@hookimpl(specname="fuse")
def fuse_hook(ctx: RunContext, exported: ExportResult) -> FuseResult:
    from tfopt.graph import count_ops, fuse_file

    work = Path(ctx.work_dir)
    target = ctx.option("target", "cpu")
    options = dict(disabled=ctx.option("disabled", ()), target=target, cpu_layer_norm=bool(ctx.option("cpu_layer_norm", False)),
                   validate=bool(ctx.option("validate", True)), progress=ctx.progress)
    ctx.progress(f"fusing the fp32 model ({target}) ...")
    fp32 = fuse_file(work / FP32_EXPORT, work / FP32_FUSED, exported.info, **options)
    ctx.add_output("optimized_fp32", fp32.model_path)
    if _precision(ctx) == "fp32":
        return fp32
    if target == "cuda":
        from .qordered import to_qordered

        ctx.progress("fusing the QAT model into the QOrdered* form (CUDA) ...")
        return to_qordered(ctx, exported, trained(ctx))
    ctx.progress("fusing the QAT model and putting its trained Q/DQ on the fused MatMuls ...")
    start = time.perf_counter()
    fused = fuse_file(work / QAT_FLOAT_EXPORT, work / QAT_FLOAT_FUSED, exported.info, **options)
    ctx.add_output("optimized_qat_float", fused.model_path)
    outcome = _write_qdq(work / QAT_FLOAT_FUSED, work / FINAL, _quants(trained(ctx)), work / QDQ_EXPORT, ctx)
    fused.model_path = work / FINAL
    fused.op_counts = count_ops(outcome.model)  # the model just written, not read back
    fused.validation = outcome.validation
    fused.seconds += time.perf_counter() - start
    return fused


@hookimpl(specname="convert_precision")
def convert_precision_hook(ctx: RunContext, fused: FuseResult) -> PrecisionResult:
    from tfopt import precision as precision_module

    if _precision(ctx) == "fp32":
        return PrecisionResult(model_path=fused.model_path, precision="fp32", notes=["fine-tuned fp32 (no QAT)"])
    notes = ["QAT: int8 weights (per-channel, symmetric) and uint8 activations with the scales training learned, as Q/DQ"]
    if ctx.option("target", "cpu") == "cpu":
        ctx.progress("post-training dynamic quantization of the fp32 model, for comparison ...")
        ptq = precision_module.convert(Path(ctx.work_dir) / FP32_FUSED, "int8")
        ctx.add_output("ptq_dynamic_int8", ptq.model_path)
        notes.append(f"PTQ dynamic comparison: {ptq.model_path.name}")
    return PrecisionResult(model_path=fused.model_path, precision="int8", notes=notes)  # validated when fused


@hookimpl(specname="make_dummy_inputs")
def make_dummy_inputs_hook(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    """Tokenized held-out texts (real, so padded by their own lengths) at batch sizes 1, 4 and 8."""
    from .train import tokenize

    run = trained(ctx)
    texts = run.prepared.dataset.eval_texts
    feeds = []
    for count in (1, 4, 8):
        encoded = tokenize(run.prepared.tokenizer, texts[:count], run.prepared.config.max_length)
        feeds.append({name: tensor.numpy().astype(np.int64) for name, tensor in encoded.items() if name in exported.io.inputs})
    return feeds


@hookimpl(specname="verify")
def verify_hook(ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]) -> VerifyResult:
    from .verify import verify_task

    return verify_task(ctx, trained(ctx), exported, Path(model_path), inputs)


@hookimpl(specname="benchmark")
def benchmark_hook(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    from .verify import benchmark_engines

    return benchmark_engines(ctx, exported, models)
