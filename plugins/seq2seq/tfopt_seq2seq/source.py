"""The run's model, loaded once per run (export, verify and benchmark share it)."""

from __future__ import annotations

from tfopt.results import RunContext
from tfopt.run_cache import PerRun
from tfopt.torch_kit import chosen_exporter

from .models import DEFAULT_SOURCE, FAMILIES, SourceModel, load_source

_MODELS: PerRun[SourceModel] = PerRun()


def attn_for(ctx: RunContext, family: str | None) -> str | None:
    """The attention implementation asked for; for a family dynamo cannot trace with sdpa (T5), eager."""
    asked = ctx.option("attn_implementation")
    if asked is None and family in FAMILIES and FAMILIES[family].eager_for_dynamo and chosen_exporter(ctx) == "dynamo":
        return "eager"
    return asked


def source_model(ctx: RunContext) -> SourceModel:
    def load() -> SourceModel:
        ctx.progress(f"loading {ctx.source or DEFAULT_SOURCE + ' (the default: random weights)'} ...")
        model = load_source(ctx.source, attn_implementation=ctx.option("attn_implementation"), progress=ctx.progress)
        attn = attn_for(ctx, model.family)
        if attn is not None and attn != model.model.config._attn_implementation:
            model.model.set_attn_implementation(attn)
        return model

    return _MODELS.get(ctx, (ctx.source, ctx.option("attn_implementation"), chosen_exporter(ctx)), load)
