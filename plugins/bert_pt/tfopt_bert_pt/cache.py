"""One loaded PyTorch model per run: export, dummy inputs, verify and benchmark share it."""

from __future__ import annotations

from tfopt.results import RunContext
from tfopt.run_cache import PerRun

from .models import SourceModel, load_source

_MODELS: PerRun[SourceModel] = PerRun()


def _key(ctx: RunContext) -> tuple:
    return (ctx.source, attn_implementation(ctx))


def attn_implementation(ctx: RunContext) -> str | None:
    """The attention the user asked for; None: sdpa where the model has it, else eager (models.attention_for)."""
    return ctx.option("attn_implementation")


def remember(ctx: RunContext, source: SourceModel) -> SourceModel:
    """Make ``source`` the model of this run (export_model() calls this for models built in code)."""
    return _MODELS.remember(ctx, _key(ctx), source)


def source_model(ctx: RunContext) -> SourceModel:
    """The run's model, loaded on first use; loaded again only if source or attention changed."""

    def load() -> SourceModel:
        ctx.progress(f"loading {ctx.source or 'the default model (all-MiniLM-L6-v2)'} ...")
        return load_source(ctx.source, attn_implementation=attn_implementation(ctx))

    return _MODELS.get(ctx, _key(ctx), load)
