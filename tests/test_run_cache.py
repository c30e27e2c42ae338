"""One source model per run: loaded once, reloaded when what names it changes, dropped with the run."""

from __future__ import annotations

import gc

from tfopt.results import RunContext
from tfopt.run_cache import PerRun


def _ctx(tmp_path, source="a"):
    return RunContext(family="test", source=source, work_dir=tmp_path)


def test_loads_once_per_run_and_key(tmp_path):
    cache, loads = PerRun(), []
    ctx = _ctx(tmp_path)
    load = lambda: loads.append(1) or object()  # noqa: E731
    first = cache.get(ctx, "k", load)
    assert cache.get(ctx, "k", load) is first and len(loads) == 1
    assert cache.get(ctx, "other", load) is not first and len(loads) == 2
    assert cache.get(_ctx(tmp_path), "k", load) is not first  # another run loads its own


def test_remembered_value_is_used_and_dropped_with_the_run(tmp_path):
    cache = PerRun()
    ctx = _ctx(tmp_path)
    built = object()
    cache.remember(ctx, "k", built)
    assert cache.get(ctx, "k", lambda: object()) is built
    del ctx
    gc.collect()
    assert cache._items == {}
