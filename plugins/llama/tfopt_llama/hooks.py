"""The llama adapter's hook implementations (``specname``: see the gpt2 adapter's hooks for why).

``fuse`` is the host's default: ``tfopt.graph.fuse_file`` with ``exported.info`` (the
family's model type, whose counts :func:`tfopt.graph.fusion.llm_counts` states).
``convert_precision`` is :mod:`tfopt.decoder_precision` (weight-only int8 by default, int4,
fp16; GPTQ rounding for the trained ``stdlib-llama`` models).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt import hookimpl
from tfopt.results import BenchResult, ExportResult, FuseResult, PrecisionResult, RunContext, VerifyResult


@hookimpl(specname="export")
def export_hook(ctx: RunContext) -> ExportResult:
    from .export import export_source

    return export_source(ctx)


@hookimpl(specname="convert_precision")
def convert_precision_hook(ctx: RunContext, fused: FuseResult) -> PrecisionResult:
    from tfopt.decoder_precision import convert_decoder

    from .textmodel import calibration_sources

    return convert_decoder(ctx, fused, calibration_sources())


@hookimpl(specname="make_dummy_inputs")
def make_dummy_inputs_hook(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    from .verify import dummy_inputs

    return dummy_inputs(ctx, exported)


@hookimpl(specname="verify")
def verify_hook(ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]) -> VerifyResult:
    from .verify import verify_model

    return verify_model(ctx, exported, model_path, inputs)


@hookimpl(specname="benchmark")
def benchmark_hook(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    from .benchmark import benchmark_models

    return benchmark_models(ctx, exported, models)
