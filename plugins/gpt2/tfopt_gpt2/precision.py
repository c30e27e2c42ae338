"""The ``convert_precision`` hook: :mod:`tfopt.decoder_precision` with GPT-2's trained text models as calibration sources."""

from __future__ import annotations

from tfopt import decoder_precision
from tfopt.results import FuseResult, PrecisionResult, RunContext


def _text_models() -> dict[str, int]:
    from .textmodel import TEXT_MODELS

    return {name: spec.n_positions for name, spec in TEXT_MODELS.items()}


def calibration_for(ctx: RunContext, precision: str, method: str):
    """The GPTQ calibration callable for this run's source, or None for round-to-nearest."""
    return decoder_precision.calibration_for(ctx, precision, method, _text_models())


def convert_decoder(ctx: RunContext, fused: FuseResult) -> PrecisionResult:
    return decoder_precision.convert_decoder(ctx, fused, _text_models())
