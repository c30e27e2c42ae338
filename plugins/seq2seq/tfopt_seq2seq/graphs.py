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
                   target=ctx.option("target", "cpu"), validate=bool(ctx.option("validate", True)), progress=ctx.progress)
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


def _calibration(ctx: RunContext, precision: str, encoder: Path):
    """GPTQ rounding for the trained models' int8/int4 decoders (their training text calibrates it), else
    round-to-nearest; ``weight_rounding`` (tfopt.decoder_precision's option) chooses."""
    from tfopt.decoder_precision import ROUNDING_OPTION, ROUNDINGS

    from .textmodel import TEXT_MODELS, calibration

    trained = TEXT_MODELS.get(ctx.source or "")
    rounding = str(ctx.option(ROUNDING_OPTION, "gptq" if trained else "nearest"))
    if rounding not in ROUNDINGS:
        raise TfoptError(f"{ROUNDING_OPTION} must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if rounding == "nearest" or precision not in WEIGHT_ONLY:
        return None
    if trained is None:
        raise TfoptError(f"{ROUNDING_OPTION}=gptq needs calibration text, which only {', '.join(TEXT_MODELS)} carry; "
                         f"use {ROUNDING_OPTION}=nearest for {ctx.source or 'this model'}")
    ctx.progress("calibrating GPTQ rounding on restorations of the model's training text ...")
    return calibration(encoder, trained)


def convert_pair(ctx: RunContext, fused: FuseResult) -> PrecisionResult:
    precision = ctx.option("precision", "fp32")
    encoder = _encoder_of(ctx, "fuse")
    if precision != "fp32":
        ctx.progress(f"converting the decoder{'' if precision in WEIGHT_ONLY else ' and the encoder'} to {precision} ...")
    from tfopt.decoder_precision import DEFAULT_INT8_METHOD, INT8_METHOD_OPTION

    method = str(ctx.option(INT8_METHOD_OPTION, DEFAULT_INT8_METHOD))  # weight-only (MatMulNBits) unless asked
    calibration = _calibration(ctx, precision, encoder) if precision == "int4" or method == DEFAULT_INT8_METHOD else None
    converted = host_precision.convert(fused.model_path, precision, int8_method=method, calibration=calibration)
    final_encoder = encoder if precision in WEIGHT_ONLY else host_precision.convert(encoder, precision).model_path
    if precision != "fp32" and ctx.option("validate", True):
        converted.validation = validate_written(converted.model_path, fused.model_path, precision)
        if final_encoder != encoder:
            validate_written(final_encoder, encoder, precision)  # raises (and removes the file) when it fails
    ctx.add_output(ENCODER_OUTPUTS["final"], final_encoder)
    return converted
