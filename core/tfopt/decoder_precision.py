"""Decoders' ``convert_precision``: the host's conversion with a decoder's choices (gpt2, llama).

int8 is weight-only here (``int8_method=weight_only``, MatMulNBits with 8 bits): on the trained
stdlib-gpt2 it agrees with fp32 better than dynamic int8 (per-tensor activations: 99.0% vs
98.0% top-1). Dynamic int8 was faster on an Intel machine with AMX (0.49x vs 0.61x of ORT raw at
b=1) and level on an AMD Zen 4 (0.41x vs 0.40x; docs/benchmark-gpt2.md);
``--option int8_method=dynamic`` picks it.

int8 (dynamic) and int4 (weight-only MatMulNBits) quantize the LM head by default: at GPT-2
small's shape it is 154 MB of the 494 MB each decode step reads, so keeping it fp32 costs
most of the gain (docs/benchmark-gpt2.md). ``lm_head_precision=fp32`` keeps it, for a
vocabulary whose logits need it; ``lm_head_precision=int8`` gives an int4 model an 8-bit head.
``int4_block_size`` (default 32) sets MatMulNBits' block along K: 16 is more accurate and
reads more bytes (a scale per 16 weights).

``weight_rounding`` (weight-only int8 and int4): ``gptq`` rounds each MatMul's weights with
GPTQ's error feedback (``tfopt.gptq``), calibrated on windows of the model's *training* text;
``nearest`` is plain round-to-nearest. The trained stdlib text models (:mod:`tfopt.textmodel`)
carry text to calibrate on, and ``calibration_text`` (a file, tokenized with the model
directory's tokenizer) gives a user's decoder-only model some: those default to ``gptq`` (on
stdlib-gpt2 int4 top-1 agreement 92.1% -> 95.9%, docs/benchmark-gpt2.md), every other source to
``nearest``; asking ``gptq`` with no text to calibrate on is a one-line error. Same file format
and speed either way.

An adapter passes ``text_models``: its trained sources' names and their position counts, and,
when its model is not a causal LM fed windows of text (the seq2seq decoder), ``calibration``: a
factory of the feeds GPTQ measures on (``tfopt.gptq.Calibration``), called only when GPTQ rounds.
"""

from __future__ import annotations

import numpy as np

from . import precision as host_precision
from .errors import TfoptError
from .results import FuseResult, PrecisionResult, RunContext

LM_HEAD_OPTION = "lm_head_precision"
INT8_METHOD_OPTION = "int8_method"
INT4_BLOCK_OPTION = "int4_block_size"
DEFAULT_INT8_METHOD = "weight_only"
ROUNDING_OPTION = "weight_rounding"
CALIBRATION_TEXT_OPTION = "calibration_text"
ROUNDINGS = ("gptq", "nearest")
CALIBRATION_WINDOWS = 64  # windows of training text, 8 per session call
CALIBRATION_LENGTH = 128  # tokens per window: 64 x 128 = 8,192 activation rows, >= K of every MatMul up to 8,192


def calibration_for(ctx: RunContext, precision: str, method: str, text_models: dict[str, int], factory=None):
    """The calibration callable for ``tfopt.precision.convert`` (GPTQ rounding), or None for nearest.

    ``text_models``: the adapter's trained sources -> their number of positions. ``factory()``,
    when given, makes the calibration instead of the causal LM's windows of training text.
    """
    positions = text_models.get(ctx.source or "")
    text_file = ctx.option(CALIBRATION_TEXT_OPTION)
    rounding = str(ctx.option(ROUNDING_OPTION, "gptq" if positions or text_file else "nearest"))
    if rounding not in ROUNDINGS:
        raise TfoptError(f"{ROUNDING_OPTION} must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if rounding == "nearest" or precision not in ("int8", "int4") or (precision == "int8" and method != "weight_only"):
        return None
    if text_file:
        if factory is not None:
            raise TfoptError(f"{CALIBRATION_TEXT_OPTION} calibrates decoder-only models; this adapter calibrates its trained models only")
        return _text_windows_calibration(_tokenized_text(ctx.source, text_file), CALIBRATION_LENGTH)
    if positions is None:
        raise TfoptError(
            f"{ROUNDING_OPTION}=gptq needs calibration text: the trained text models ({', '.join(text_models)}) carry "
            f"theirs, another model needs --{CALIBRATION_TEXT_OPTION.replace('_', '-')} FILE; or use {ROUNDING_OPTION}=nearest"
        )
    if factory is not None:
        return factory()
    from .textmodel import training_bytes

    return _text_windows_calibration(training_bytes(), min(CALIBRATION_LENGTH, positions))


def _tokenized_text(source: str | None, text_file) -> np.ndarray:
    """The token ids of ``text_file`` by the tokenizer in the model directory ``source``."""
    from pathlib import Path

    path = Path(str(text_file))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TfoptError(f"{CALIBRATION_TEXT_OPTION}: cannot read {path} as UTF-8 text ({exc})") from None
    if not source or not Path(source).is_dir():
        raise TfoptError(f"{CALIBRATION_TEXT_OPTION} needs the model directory's tokenizer; {source!r} is not a directory")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # no tokenizer files, or ones transformers cannot read
        raise TfoptError(f"{CALIBRATION_TEXT_OPTION}: no usable tokenizer in {source} ({str(exc).splitlines()[0][:160]})") from None
    ids = np.asarray(tokenizer(text)["input_ids"], dtype=np.int64)
    if len(ids) < CALIBRATION_LENGTH + 1:
        raise TfoptError(f"{CALIBRATION_TEXT_OPTION}: {path} holds {len(ids)} tokens; GPTQ needs at least {CALIBRATION_LENGTH + 1}")
    return ids


def _text_windows_calibration(tokens: np.ndarray, length: int):
    """GPTQ's feeds: CALIBRATION_WINDOWS windows of ``length`` tokens spread over ``tokens``, 8 per session call."""

    def feeds(session):
        from .text_quality import window_feed, windows

        ids = windows(tokens, CALIBRATION_WINDOWS, length)
        for chunk in np.split(ids, CALIBRATION_WINDOWS // 8):
            yield window_feed(session, chunk)

    return feeds


def convert_decoder(ctx: RunContext, fused: FuseResult, text_models: dict[str, int], calibration=None) -> PrecisionResult:
    precision = ctx.option("precision", "fp32")
    lm_head = str(ctx.option(LM_HEAD_OPTION, "quantized"))
    host_precision.check_lm_head(lm_head)
    if precision != "fp32":
        ctx.progress(f"converting to {precision} (LM head: {lm_head if precision in ('int8', 'int4') else 'fp32'}) ...")
    method = str(ctx.option(INT8_METHOD_OPTION, DEFAULT_INT8_METHOD))
    block = ctx.option(INT4_BLOCK_OPTION, host_precision.INT4_BLOCK_SIZE)
    if isinstance(block, bool) or not isinstance(block, int):
        raise TfoptError(f"{INT4_BLOCK_OPTION} must be an integer, got {block!r}")
    calibration = calibration_for(ctx, precision, method, text_models, calibration)
    if calibration is not None:
        ctx.progress("calibrating GPTQ rounding on the model's training text ...")
    converted = host_precision.convert(
        fused.model_path, precision, lm_head=lm_head, int8_method=method, int4_block_size=block, calibration=calibration
    )
    if precision != "fp32" and ctx.option("validate", True):
        from .graph.validate import validate_written

        converted.validation = validate_written(converted.emulation_path or converted.model_path, fused.model_path, precision)
    return converted
