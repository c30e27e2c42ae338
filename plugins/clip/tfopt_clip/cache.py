"""One loaded PyTorch model per run: export, dummy inputs, verify and benchmark share it."""

from __future__ import annotations

from tfopt.results import RunContext
from tfopt.run_cache import PerRun

from .models import DEFAULT_SOURCE, SourceModel, load_source

_MODELS: PerRun[SourceModel] = PerRun()


def attn_implementation(ctx: RunContext) -> str | None:
    """The user's choice, or None: transformers' default for the class (sdpa)."""
    return ctx.option("attn_implementation")


def _key(ctx: RunContext) -> tuple:
    return (ctx.source, attn_implementation(ctx))


def remember(ctx: RunContext, source: SourceModel) -> SourceModel:
    """Make ``source`` the model of this run (models built in code: tests)."""
    return _MODELS.remember(ctx, _key(ctx), source)


def source_model(ctx: RunContext) -> SourceModel:
    def load() -> SourceModel:
        ctx.progress(f"loading {ctx.source or DEFAULT_SOURCE} ...")
        return load_source(ctx.source, attn_implementation=attn_implementation(ctx))

    return _MODELS.get(ctx, _key(ctx), load)
