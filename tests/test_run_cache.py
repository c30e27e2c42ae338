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


def test_cache_root_prefers_tfopt_then_xdg_then_home(monkeypatch, tmp_path):
    from pathlib import Path

    from tfopt.run_cache import cache_root

    monkeypatch.delenv("TFOPT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == Path(tmp_path / "home" / ".cache" / "tfopt")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tfopt"
    monkeypatch.setenv("TFOPT_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
