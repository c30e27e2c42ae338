"""The bert_tf adapter's hook implementations.

Registered under their hooks' names through ``specname``: ``export`` is also this
package's submodule, and a submodule import rebinds the package attribute of the same
name, which would hide the hook from a plugin manager that registers the package later.
TensorFlow is imported inside the stages, so listing plugins does not pay for it.

``fuse`` and ``convert_precision`` are the host's: its default plugin calls
``tfopt.graph.fuse_file`` with ``exported.info`` (``model_type="bert_tf"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt import hookimpl
from tfopt.results import BenchResult, ExportResult, RunContext, VerifyResult

from .cache import SourceCache


def _load(ctx: RunContext):
    from .models import load_source

    return load_source(ctx.source, signature=ctx.option("signature", "serving_default"))


sources = SourceCache(load=_load, key=lambda ctx: (ctx.source, ctx.option("signature", "serving_default")))


@hookimpl(specname="export")
def export_hook(ctx: RunContext) -> ExportResult:
    from .export import export_with_tf2onnx

    return export_with_tf2onnx(ctx, sources.get(ctx))


@hookimpl(specname="make_dummy_inputs")
def make_dummy_inputs_hook(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    from .inputs import feeds_for

    return feeds_for(ctx, sources.get(ctx), exported)


@hookimpl(specname="verify")
def verify_hook(ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]) -> VerifyResult:
    from .check import verify_against_source

    return verify_against_source(ctx, sources.get(ctx), Path(model_path), inputs)


@hookimpl(specname="benchmark")
def benchmark_hook(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    from .timing import benchmark_source

    return benchmark_source(ctx, sources.get(ctx), models)


def export_model(ctx: RunContext, model, name: str = "model") -> ExportResult:
    """Export a Hugging Face TF BERT built in code; it becomes the run's model for verify/benchmark."""
    from .export import export_with_tf2onnx
    from .models import hf_source

    return export_with_tf2onnx(ctx, sources.remember(ctx, hf_source(model, name)))
