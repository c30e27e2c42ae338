"""The bert_keras adapter's hook implementations (named through ``specname``: see tfopt_bert_tf.hooks).

Verify, dummy inputs and benchmark are bert_tf's stages run on this adapter's source:
a Keras model wrapped as a TfSource. Keras and TensorFlow are imported inside the stages.
``fuse`` and ``convert_precision`` are the host's (``model_type="bert_keras"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt import hookimpl
from tfopt.results import BenchResult, ExportResult, RunContext, VerifyResult
from tfopt_bert_tf.cache import SourceCache


def _load(ctx: RunContext):
    from .models import load_source

    return load_source(ctx.source)


sources = SourceCache(load=_load, key=lambda ctx: (ctx.source,))


@hookimpl(specname="export")
def export_hook(ctx: RunContext) -> ExportResult:
    from .export import export_keras

    return export_keras(ctx, sources.get(ctx))


@hookimpl(specname="make_dummy_inputs")
def make_dummy_inputs_hook(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    from tfopt_bert_tf.inputs import feeds_for

    return feeds_for(ctx, sources.get(ctx), exported)


@hookimpl(specname="verify")
def verify_hook(ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]) -> VerifyResult:
    from tfopt_bert_tf.check import verify_against_source

    return verify_against_source(ctx, sources.get(ctx), Path(model_path), inputs)


@hookimpl(specname="benchmark")
def benchmark_hook(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult:
    from tfopt_bert_tf.timing import benchmark_source

    return benchmark_source(ctx, sources.get(ctx), models)


def export_model(ctx: RunContext, model, name: str = "model") -> ExportResult:
    """Export a Keras model object (Keras 3 or tf_keras); it becomes the run's model for verify/benchmark."""
    from .export import export_keras
    from .models import keras_source

    return export_keras(ctx, sources.remember(ctx, keras_source(model, name)))
