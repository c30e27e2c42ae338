"""One loaded TF model per run: export, dummy inputs, verify and benchmark share it.

Keyed by the run's context object (by identity; ``RunContext`` is an unhashable dataclass)
and dropped when the context is garbage-collected. Not kept in ``ctx.results``: that dict
becomes the JSON report, and a TF model is not report material. Each adapter makes its
own :class:`SourceCache` with its own loader.
"""

from __future__ import annotations

import weakref
from typing import Callable

from tfopt.results import RunContext

from .source import TfSource


class SourceCache:
    def __init__(self, load: Callable[[RunContext], TfSource], key: Callable[[RunContext], tuple]):
        self._load = load
        self._key = key
        self._loaded: dict[int, tuple[tuple, TfSource]] = {}

    def remember(self, ctx: RunContext, source: TfSource) -> TfSource:
        """Make ``source`` the model of this run (for models built in code)."""
        if id(ctx) not in self._loaded:
            weakref.finalize(ctx, self._loaded.pop, id(ctx), None)
        self._loaded[id(ctx)] = (self._key(ctx), source)
        return source

    def get(self, ctx: RunContext) -> TfSource:
        """The run's model, loaded on first use and again only if what names it changed."""
        cached = self._loaded.get(id(ctx))
        if cached is not None and cached[0] == self._key(ctx):
            return cached[1]
        ctx.progress(f"loading {ctx.source or 'the built-in tiny model'} ...")
        return self.remember(ctx, self._load(ctx))
