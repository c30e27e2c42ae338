"""One loaded TF model per run: export, dummy inputs, verify and benchmark share it.

Each adapter makes its own :class:`SourceCache` with its own loader, on top of the
host's :class:`tfopt.run_cache.PerRun`.
"""

from __future__ import annotations

from typing import Callable

from tfopt.results import RunContext
from tfopt.run_cache import PerRun

from .source import TfSource


class SourceCache:
    def __init__(self, load: Callable[[RunContext], TfSource], key: Callable[[RunContext], tuple]):
        self._load = load
        self._key = key
        self._sources: PerRun[TfSource] = PerRun()

    def remember(self, ctx: RunContext, source: TfSource) -> TfSource:
        """Make ``source`` the model of this run (for models built in code)."""
        return self._sources.remember(ctx, self._key(ctx), source)

    def get(self, ctx: RunContext) -> TfSource:
        """The run's model, loaded on first use and again only if what names it changed."""

        def load() -> TfSource:
            ctx.progress(f"loading {ctx.source or 'the built-in tiny model'} ...")
            return self._load(ctx)

        return self._sources.get(ctx, self._key(ctx), load)
