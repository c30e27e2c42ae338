"""The six hooks a model-family adapter implements.

``tfopt run --plugin NAME`` calls each hook on the adapter NAME only (plus every
plugin that is not an adapter, such as the built-in defaults and wrappers), so
every spec is ``firstresult``: the first non-None result wins. The built-in
default plugin implements the generic versions with ``trylast=True``; an
adapter overrides only what differs for its family.

An *adapter* is a plugin that implements ``export``. Plugins that implement
other hooks only (timers, tracers, extra fusions) are *extensions*: they take
part in every run, typically as ``wrapper=True`` hookimpls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pluggy

from .results import (
    BenchResult,
    ExportResult,
    FuseResult,
    PrecisionResult,
    RunContext,
    VerifyResult,
)

hookspec = pluggy.HookspecMarker("tfopt")
hookimpl = pluggy.HookimplMarker("tfopt")

HOOK_NAMES = ("export", "fuse", "convert_precision", "make_dummy_inputs", "verify", "benchmark")


@hookspec(firstresult=True)
def export(ctx: RunContext) -> ExportResult | None:
    """Export the source model named by ``ctx.source`` to ONNX under ``ctx.work_dir``.

    Called first. ``ctx.source`` is a path, a hub id or None (the adapter's
    built-in default model). Returns the exported model's path, its IO spec and
    the :class:`~tfopt.results.ModelInfo` the fusion stage needs.
    """


@hookspec(firstresult=True)
def fuse(ctx: RunContext, exported: ExportResult) -> FuseResult | None:
    """Fuse the exported graph into ONNX Runtime contrib ops.

    Called after ``export``. Writes the fused model under ``ctx.work_dir`` and
    returns fused-op counts, per-rule counts, the counts the family expects and
    the list of expected fusions that did not happen. The default applies the
    shared rules plus ``exported.info.rules`` and checks ``exported.info.expected``
    (or the model type's built-in counts), so most adapters need no ``fuse``.
    """


@hookspec(firstresult=True)
def convert_precision(ctx: RunContext, fused: FuseResult) -> PrecisionResult | None:
    """Convert the fused model to ``ctx.options['precision']`` (fp32, fp16 or int8).

    Called after ``fuse``. fp32 returns the fused model unchanged.
    """


@hookspec(firstresult=True)
def make_dummy_inputs(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]] | None:
    """Return input feeds for verification and benchmarking.

    Several input shapes, with realistic values (ids inside the vocabulary, padding
    masks of varied lengths). ``ctx.options`` may carry ``batch_sizes``,
    ``sequence_lengths`` (for a model with a sequence axis; refuse it otherwise) and
    ``axis_sizes`` ({axis name: sizes}) to ask for a specific grid.
    """


@hookspec(firstresult=True)
def verify(
    ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]
) -> VerifyResult | None:
    """Compare the model at ``model_path`` with the source framework on ``inputs``.

    Called after ``convert_precision``. Returns diff statistics and pass/fail
    against the tolerance for ``ctx.options['precision']``.
    """


@hookspec(firstresult=True)
def benchmark(ctx: RunContext, exported: ExportResult, models: dict[str, Path]) -> BenchResult | None:
    """Measure latency of the source framework and of each ONNX model in ``models``.

    ``models`` maps an engine label (``"ort:raw"``, ``"ort:tfopt"``) to a model
    path. Called last; returns one row per engine and input shape
    (``LatencyRow.shape``: the input's axes by name).
    """


def hook_signatures() -> dict[str, Any]:
    """Name -> spec function, for documentation and meta-tests."""
    return {name: globals()[name] for name in HOOK_NAMES}
