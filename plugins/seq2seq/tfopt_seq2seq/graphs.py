"""Fusion and precision for the pair: the decoder is the run's model, the encoder goes along beside it.

The pipeline follows one model through its stages, so the decoder (what runs once per token)
is that model and each stage does the same to the encoder, naming it in the report's outputs
(:data:`ENCODER_OUTPUTS`). The fusion result the report shows covers both graphs (the encoder
is its companion, ``FuseResult.companions``): op counts,
expected counts and primitives left are the sums, and each missing fusion names its graph,
so nothing unfused in the encoder hides behind a complete decoder. int8/int4 quantize the
decoder's weights only (the encoder runs once per source), with GPTQ rounding for the models trained
here (calibrated on their training text) and round-to-nearest otherwise; fp16 converts both.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from tfopt import precision as host_precision
from tfopt.errors import TfoptError
from tfopt.graph import fuse_file
from tfopt.graph.validate import validate_written
from tfopt.results import ExportResult, FuseResult, PrecisionResult, RunContext

from .export import ENCODER_OUTPUTS
from .source import source_model

WEIGHT_ONLY = ("int8", "int4")


def _encoder_of(ctx: RunContext, stage: str) -> Path:
    path = (ctx.results.get("extra_outputs") or {}).get(ENCODER_OUTPUTS[stage])
    if path is None:
        raise TfoptError(f"the run has no encoder from its {stage} stage (the seq2seq adapter's stages run together)")
    return Path(path)


def _names(value) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else list(value)


def fuse_pair(ctx: RunContext, exported: ExportResult) -> FuseResult:
    source = source_model(ctx)
    work = Path(ctx.work_dir)
    options = dict(disabled=_names(ctx.option("disabled", ())), input_int32=bool(ctx.option("input_int32", False)),
                   target=ctx.option("target", "cpu"), cpu_layer_norm=bool(ctx.option("cpu_layer_norm", False)),
                   validate=bool(ctx.option("validate", True)), progress=ctx.progress)
    ctx.progress("fusing the encoder ...")
    encoder = fuse_file(_encoder_of(ctx, "export"), work / "encoder.opt.onnx", source.encoder_info, **options)
    ctx.progress("fusing the decoder ...")
    decoder = fuse_file(exported.model_path, work / "decoder.opt.onnx", exported.info, **options)
    ctx.add_output(ENCODER_OUTPUTS["fuse"], encoder.model_path)
    ctx.results["encoder_fuse"] = encoder  # the encoder's own figures, for verify's report
    if encoder.validation is not None and not encoder.validation.passed:
        raise TfoptError(f"the fused encoder failed validation: {encoder.validation.problem}")
    return dataclasses.replace(
        decoder,
        op_counts=dict(Counter(decoder.op_counts) + Counter(encoder.op_counts)),
        rule_counts=dict(Counter(decoder.rule_counts) + Counter(encoder.rule_counts)),
        expected=dict(Counter(decoder.expected) + Counter(encoder.expected)),
        missing=[f"decoder: {m}" for m in decoder.missing] + [f"encoder: {m}" for m in encoder.missing],
        leftover=dict(Counter(decoder.leftover) + Counter(encoder.leftover)),
        seconds=decoder.seconds + encoder.seconds,
        peak_rss_mb=max(decoder.peak_rss_mb, encoder.peak_rss_mb),
        dropped_rules=[*decoder.dropped_rules, *encoder.dropped_rules],
        companions={"encoder": encoder.model_path},
    )


def convert_pair(ctx: RunContext, fused: FuseResult) -> PrecisionResult:
    """The decoder as the other decoder adapters convert theirs (:mod:`tfopt.decoder_precision`: its
    options, GPTQ for the trained models on restorations of their training text); fp16 converts the
    encoder too, int8/int4 keep it fp32."""
    from tfopt.decoder_precision import convert_decoder

    from .textmodel import TEXT_MODELS, calibration

    precision = ctx.option("precision", "fp32")
    if precision == "bf16":  # its verify and generation run both graphs on ONNX Runtime's CPU provider
        raise TfoptError("the seq2seq adapter converts to fp16, int8 and int4; bf16 (verified through a CPU emulation) "
                         "is written by the llama, gpt2 and encoder adapters only")
    encoder = _encoder_of(ctx, "fuse")
    trained = TEXT_MODELS.get(ctx.source or "")
    positions = {name: spec.budget.sequence_length for name, spec in TEXT_MODELS.items()}
    converted = convert_decoder(ctx, fused, positions, calibration=lambda: calibration(encoder, trained))
    final_encoder = encoder
    if precision not in ("fp32", *WEIGHT_ONLY):
        ctx.progress(f"converting the encoder to {precision} ...")
        final_encoder = host_precision.convert(encoder, precision).model_path
        if ctx.option("validate", True):
            validate_written(final_encoder, encoder, precision)  # raises (and removes the file) when it fails
    ctx.add_output(ENCODER_OUTPUTS["final"], final_encoder)
    return converted
