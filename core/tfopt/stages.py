"""Calling one stage: :class:`StageRunner`, shared by the pipeline and ``tfopt profile``.

A stage is called through the selected adapter's subset caller (the adapter plus every
extension, never another adapter), timed, announced through ``ctx.progress`` and checked:
a stage with no implementation, or one that returns the wrong type, is a one-line
TfoptError naming the stage and the plugins that implement it.

It lives apart from ``pipeline.py`` so that ``profile.py`` (which asks the adapter for its
dummy inputs) can take it without importing the pipeline, which imports ``profile.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pluggy

from .errors import TfoptError, first_line
from .feeds import describe_feeds
from .plugins import adapter_caller, generic_caller
from .results import BenchResult, ExportResult, FuseResult, PrecisionResult, RunContext, VerifyResult

STAGE_ORDER = ("export", "fuse", "convert_precision", "make_dummy_inputs", "verify", "benchmark")
RESULT_TYPES = {
    "export": ExportResult,
    "fuse": FuseResult,
    "convert_precision": PrecisionResult,
    "verify": VerifyResult,
    "benchmark": BenchResult,
}
TRACEBACK_ENV = "TFOPT_TRACEBACK"


def _one_line(exc: BaseException) -> str:
    """``Type: message``, the message as :func:`tfopt.errors.first_line` quotes it (summarized, whole under -v)."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def _check_feeds(value: Any) -> str | None:
    """Why ``value`` is not a non-empty list of {name: ndarray} feeds, or None."""
    if not isinstance(value, list) or not value:
        return f"returned {type(value).__name__}, expected a non-empty list of feeds"
    for feed in value:
        if not isinstance(feed, dict) or not feed or not all(isinstance(v, np.ndarray) for v in feed.values()):
            return "returned a feed that is not a non-empty dict of numpy arrays"
    return None


class StageRunner:
    """Calls stages for one adapter (or none: generic stages only) and keeps their timings."""

    def __init__(self, pm: pluggy.PluginManager, adapter: str | None, ctx: RunContext):
        self.pm = pm
        self.adapter = adapter
        self.ctx = ctx
        self.stages: dict[str, dict[str, Any]] = {}

    def caller(self, stage: str):
        if self.adapter is None:
            return generic_caller(self.pm, stage)
        return adapter_caller(self.pm, self.adapter, stage)

    def implementations(self, stage: str) -> list[str]:
        """Plugins that implement ``stage`` in this run, in the order pluggy calls them."""
        impls = self.caller(stage).get_hookimpls()
        return [impl.plugin_name for impl in reversed(impls) if not (impl.wrapper or impl.hookwrapper)]

    def __call__(self, stage: str, **kwargs: Any) -> Any:
        implementations = self.implementations(stage)
        who = ", ".join(implementations) or "no plugin"
        step = STAGE_ORDER.index(stage) + 1 if stage in STAGE_ORDER else 0
        self.ctx.progress(f"[{step}/{len(STAGE_ORDER)}] {stage} ...")
        start = time.perf_counter()
        try:
            result = self.caller(stage)(ctx=self.ctx, **kwargs)
        except TfoptError:
            raise
        except Exception as exc:
            hint = "" if os.environ.get(TRACEBACK_ENV) else f" (set {TRACEBACK_ENV}=1 for the traceback)"
            raise TfoptError(f"stage {stage!r} failed in {who}: {_one_line(exc)}{hint}") from exc
        seconds = time.perf_counter() - start
        if result is None:
            raise TfoptError(
                f"stage {stage!r} returned nothing: no active plugin implements it for adapter {self.adapter!r}"
                f" (implemented by: {who})"
            )
        expected = RESULT_TYPES.get(stage)
        problem = (
            _check_feeds(result)
            if stage == "make_dummy_inputs"
            else None if isinstance(result, expected) else f"returned {type(result).__name__}, expected {expected.__name__}"
        )
        if problem:
            raise TfoptError(f"stage {stage!r} ({who}) {problem}")
        if getattr(result, "seconds", None) == 0.0:
            result.seconds = seconds
        self.stages[stage] = {"seconds": round(seconds, 4), "implementations": implementations}
        self.ctx.results[stage] = describe_feeds(result) if stage == "make_dummy_inputs" else result
        self.ctx.progress(f"{stage} done in {seconds:.2f} s")
        return result
