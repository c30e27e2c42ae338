"""The longformer adapter's hook implementations (registered by ``specname``, see bert_pt's hooks for why).

torch, transformers and the extension are imported inside the hooks, so ``tfopt plugins`` does not pay for them.
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


@hookimpl(specname="fuse")
def fuse_hook(ctx: RunContext, exported: ExportResult) -> FuseResult | None:
    """The CUDA target rewrites the attention after fusing; the CPU target is the host's default fuse."""
    if ctx.option("target", "cpu") != "cuda":
        return None
    from .fuse import fuse_cuda

    return fuse_cuda(ctx, exported)


@hookimpl(specname="convert_precision")
def convert_precision_hook(ctx: RunContext, fused: FuseResult) -> PrecisionResult | None:
    precision = ctx.option("precision", "fp32")
    if ctx.option("target", "cpu") != "cuda" or precision == "fp32":
        return None  # the host's default: fp16 / int8 validated against the fused model
    from .precision import convert_cuda

    return convert_cuda(ctx, fused, precision)


@hookimpl(specname="make_dummy_inputs")
def make_dummy_inputs_hook(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    from .inputs import dummy_inputs_for

    return dummy_inputs_for(ctx, exported)


@hookimpl(specname="verify")
def verify_hook(ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]) -> VerifyResult:
    from .verify import verify_model

    return verify_model(ctx, exported, model_path, inputs)


@hookimpl(specname="benchmark")
def benchmark_hook(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    from .benchmark import benchmark_models

    return benchmark_models(ctx, exported, models)


