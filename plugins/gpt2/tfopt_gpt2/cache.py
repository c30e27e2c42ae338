"""One loaded PyTorch model per run: export, dummy inputs, verify, benchmark and generation share it."""

from __future__ import annotations

from tfopt.errors import TfoptError
from tfopt.results import RunContext
from tfopt.run_cache import PerRun

from .models import DEFAULT_SOURCE, SourceModel, load_source

_MODELS: PerRun[SourceModel] = PerRun()


def attn_implementation(ctx: RunContext) -> str:
    return ctx.option("attn_implementation", "sdpa")


def lm_head_option(ctx: RunContext) -> bool | None:
    """``lm_head`` from the options (a bool, or "true"/"false" from a command line); None = as the checkpoint says."""
    value = ctx.option("lm_head")
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise TfoptError(f"lm_head must be true or false, got {value!r}")


def _key(ctx: RunContext) -> tuple:
    return (ctx.source, attn_implementation(ctx), lm_head_option(ctx))


def remember(ctx: RunContext, source: SourceModel) -> SourceModel:
    """Make ``source`` the model of this run (for models built in code)."""
    return _MODELS.remember(ctx, _key(ctx), source)


def source_model(ctx: RunContext) -> SourceModel:
    """The run's model, loaded on first use; loaded again only if what names it changed."""

    def load() -> SourceModel:
        ctx.progress(f"loading {ctx.source or DEFAULT_SOURCE + ' (the default: random weights)'} ...")
        return load_source(
            ctx.source, attn_implementation=attn_implementation(ctx), lm_head=lm_head_option(ctx), progress=ctx.progress
        )

    return _MODELS.get(ctx, _key(ctx), load)
