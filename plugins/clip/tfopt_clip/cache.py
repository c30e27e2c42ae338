"""One loaded PyTorch model per run: export, dummy inputs, verify and benchmark share it (attn_implementation unset: transformers' default for the class, sdpa)."""

from __future__ import annotations

from tfopt.results import RunContext
from tfopt.run_cache import SourceModels

from .models import DEFAULT_SOURCE, SourceModel, load_source

# load_source is looked up at call time, so a test can wrap it
_MODELS: SourceModels = SourceModels(lambda source, attn: load_source(source, attn_implementation=attn), DEFAULT_SOURCE)


def source_model(ctx: RunContext) -> SourceModel:
    """The run's model, loaded on first use; loaded again only if the source or the attention changed."""
    return _MODELS.get(ctx)


def remember(ctx: RunContext, source: SourceModel) -> SourceModel:
    """Make ``source`` the model of this run (models built in code: tests, benchmarks)."""
    return _MODELS.remember(ctx, source)
