"""One loaded PyTorch model per run: export, dummy inputs, verify and benchmark share it.

Keyed by the run's context object (by identity; ``RunContext`` is an unhashable dataclass)
and dropped when the context is garbage-collected. Not kept in ``ctx.results``: that
dict becomes the JSON report, and a torch model is not report material.
"""

from __future__ import annotations

import weakref

from tfopt.results import RunContext

from .models import SourceModel, load_source

_LOADED: dict[int, tuple[tuple, SourceModel]] = {}


def _key(ctx: RunContext) -> tuple:
    return (ctx.source, attn_implementation(ctx))


def attn_implementation(ctx: RunContext) -> str:
    return ctx.option("attn_implementation", "sdpa")


def remember(ctx: RunContext, source: SourceModel) -> SourceModel:
    """Make ``source`` the model of this run (export_model() calls this for models built in code)."""
    if id(ctx) not in _LOADED:
        weakref.finalize(ctx, _LOADED.pop, id(ctx), None)
    _LOADED[id(ctx)] = (_key(ctx), source)
    return source


def source_model(ctx: RunContext) -> SourceModel:
    """The run's model, loaded on first use; loaded again only if source or attention changed."""
    cached = _LOADED.get(id(ctx))
    if cached is not None and cached[0] == _key(ctx):
        return cached[1]
    ctx.progress(f"loading {ctx.source or 'the default model (all-MiniLM-L6-v2)'} ...")
    return remember(ctx, load_source(ctx.source, attn_implementation=attn_implementation(ctx)))
