"""One loaded Longformer per run: export, dummy inputs, verify and benchmark share it."""

from __future__ import annotations

from tfopt.results import RunContext
from tfopt.run_cache import PerRun

from .models import DEFAULT_SOURCE, SourceModel, load_source

_MODELS: PerRun[SourceModel] = PerRun()


def source_model(ctx: RunContext) -> SourceModel:
    def load() -> SourceModel:
        ctx.progress(f"loading {ctx.source or DEFAULT_SOURCE} ...")
        return load_source(ctx.source)

    return _MODELS.get(ctx, (ctx.source,), load)
