"""The gpt2 adapter's hook implementations.

Each is registered under its hook's name through ``specname``: the plain names
(``export``, ``verify``, ``benchmark``) are this package's submodules, and importing a
submodule rebinds the package attribute of the same name, which would hide a hook
from any plugin manager that registers the package afterwards.

torch and transformers are imported inside the hooks, so listing plugins
(``tfopt plugins``) does not pay for them.

``fuse`` is not implemented here: the host's default plugin calls ``tfopt.graph.fuse_file``
with ``exported.info`` (model_type "gpt2"), which is all this family needs.
``convert_precision`` is the host's conversion plus one decoder choice: the LM head's
precision under int8/int4 (``--option lm_head_precision=quantized|fp32``).
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
    from .precision import convert_decoder

    return convert_decoder(ctx, fused)


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
