"""One loaded source model per run, shared by an adapter's stages (export, verify, benchmark);
and :func:`cache_root`, where adapters keep what outlives a run (a compiled extension, a trained model).

Keyed by the run's context object (by identity: ``RunContext`` is an unhashable dataclass)
plus what names the model, and dropped when the context is garbage-collected. Not kept in
``ctx.results``: that dict becomes the JSON report, and a framework model is not report material.
"""

from __future__ import annotations

import os
import weakref
import types
from pathlib import Path
from typing import Callable, Hashable, TypeVar

from .results import RunContext

T = TypeVar("T")


def cache_root() -> Path:
    """tfopt's persistent cache: ``$TFOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/tfopt``, else ``~/.cache/tfopt``."""
    if os.environ.get("TFOPT_CACHE_DIR"):
        return Path(os.environ["TFOPT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tfopt"


class PerRun:
    """One object per run (per ``RunContext``), e.g. the loaded source model.

    ``_MODELS: PerRun[MyModel] = PerRun()`` at module level; then in each hook
    ``_MODELS.get(ctx, key, load)`` loads on first use and returns the same object to the
    run's later stages; ``_MODELS.remember(ctx, key, model)`` for a model built in code
    (tests, benchmarks). The object goes when the context is garbage-collected.
    """

    @classmethod
    def __class_getitem__(cls, item):
        """``PerRun[MyModel]`` in annotations (without typing.Generic's machinery in help())."""
        return types.GenericAlias(cls, item)

    def __init__(self) -> None:
        self._items: dict[int, tuple[Hashable, T]] = {}

    def remember(self, ctx: RunContext, key: Hashable, value: T) -> T:
        """Make ``value`` this run's object (adapters call it for models built in code)."""
        if id(ctx) not in self._items:
            weakref.finalize(ctx, self._items.pop, id(ctx), None)
        self._items[id(ctx)] = (key, value)
        return value

    def get(self, ctx: RunContext, key: Hashable, load: Callable[[], T]) -> T:
        """This run's object, loaded on first use and again only if ``key`` changed."""
        cached = self._items.get(id(ctx))
        if cached is not None and cached[0] == key:
            return cached[1]
        return self.remember(ctx, key, load())


class SourceModels:
    """An adapter's source model, one per run: ``load(source, attn_implementation)`` on first use, and
    again only when the run's source or its ``attn_implementation`` option changed.

    The bookkeeping of :class:`PerRun` around the key adapters share; ``label`` names the default
    model in the "loading ..." line. ``remember`` makes a model built in code the run's (tests).
    """

    def __init__(self, load: Callable[[str | None, str | None], T], label: str) -> None:
        self._load, self._label, self._models = load, label, PerRun()

    @staticmethod
    def _key(ctx: RunContext) -> tuple:
        return (ctx.source, ctx.option("attn_implementation"))

    def get(self, ctx: RunContext) -> T:
        def load() -> T:
            ctx.progress(f"loading {ctx.source or self._label} ...")
            return self._load(ctx.source, ctx.option("attn_implementation"))

        return self._models.get(ctx, self._key(ctx), load)

    def remember(self, ctx: RunContext, model: T) -> T:
        return self._models.remember(ctx, self._key(ctx), model)
