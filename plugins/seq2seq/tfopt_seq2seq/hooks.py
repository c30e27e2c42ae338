"""The seq2seq adapter's hook implementations: every stage handles the encoder beside the decoder (:mod:`.graphs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt import hookimpl
from tfopt.results import BenchResult, ExportResult, FuseResult, PrecisionResult, RunContext, VerifyResult


@hookimpl(specname="export")
def export_hook(ctx: RunContext) -> ExportResult:
    from .export import export_source

    return export_source(ctx)


@hookimpl(specname="fuse")
def fuse_hook(ctx: RunContext, exported: ExportResult) -> FuseResult:
    from .graphs import fuse_pair

    return fuse_pair(ctx, exported)


@hookimpl(specname="convert_precision")
def convert_precision_hook(ctx: RunContext, fused: FuseResult) -> PrecisionResult:
    from .graphs import convert_pair

    return convert_pair(ctx, fused)


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
