"""The clip adapter's hook implementations.

Registered under their hooks' names through ``specname``: ``export``, ``verify`` and
``benchmark`` are also this package's submodules, and importing a submodule rebinds the
package attribute of the same name. torch and transformers are imported inside the hooks,
so ``tfopt plugins`` does not pay for them. ``fuse`` and ``convert_precision`` are the host's
defaults: the shared rules with the counts of the model's type (``ExportResult.info``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt import hookimpl
from tfopt.results import BenchResult, ExportResult, RunContext, VerifyResult


@hookimpl(specname="export")
def export_hook(ctx: RunContext) -> ExportResult:
    from .export import export_source

    return export_source(ctx)


@hookimpl(specname="make_dummy_inputs")
def make_dummy_inputs_hook(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    from .inputs import dummy_inputs_for

    return dummy_inputs_for(ctx, exported)


@hookimpl(specname="verify")
def verify_hook(
    ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]
) -> VerifyResult:
    from .verify import verify_model

    return verify_model(ctx, exported, model_path, inputs)


@hookimpl(specname="benchmark")
def benchmark_hook(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    from .benchmark import benchmark_models

    return benchmark_models(ctx, exported, models)
