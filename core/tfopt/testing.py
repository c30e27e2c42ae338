"""The kit for plugin authors: pytest fixtures and a conformance check every adapter must pass.

A plain module, not an auto-loaded pytest plugin: import what you use.

.. code-block:: python

    # plugins/myfamily/tests/test_conformance.py
    from tfopt.testing import check_adapter, run_context, tfopt_pm  # noqa: F401 (fixtures)

    def test_my_adapter_conforms(tmp_path):
        check_adapter("myfamily", source="tiny-model", work_dir=tmp_path)

    def test_export_hook(tfopt_pm, run_context):
        ctx = run_context("myfamily", source="tiny-model")
        exported = adapter_caller(tfopt_pm, "myfamily", "export")(ctx=ctx)
        ...

(``pytest_plugins = ["tfopt.testing"]`` works too, in the rootdir's conftest.py only.)
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest

from .console import third_party_output
from .errors import TfoptError
from .feeds import graph_inputs
from .hookspecs import hookimpl
from .pipeline import RunOutcome, run_pipeline
from .plugins import TfoptPluginManager, build_plugin_manager
from .report import REPORT_FILE, SCHEMA_VERSION
from .results import (
    BenchResult,
    ExportResult,
    FuseResult,
    PrecisionResult,
    RunContext,
    VerifyResult,
)

# Cheap benchmark settings for conformance runs: the hook must work, the numbers do not matter.
# No sequence lengths: not every model has a sequence axis (images of one size refuse them).
QUICK_OPTIONS = {"bench_repeat": 2, "bench_warmup": 1, "bench_batch_sizes": [1]}


def isolated_plugin_manager(
    work_dir: str | Path | None = None, *, plugins: dict[str, object] | None = None
) -> TfoptPluginManager:
    """Every installed plugin, ignoring this machine's TFOPT_PLUGINS and tfopt.toml.

    ``plugins``: {name: module or object} registered by hand when no installed plugin has
    that name, so a package's tests also run before it is pip-installed (its entry point
    then does the same registration).
    """
    pm = build_plugin_manager(environ={}, cwd=work_dir or tempfile.gettempdir())
    for name, plugin in (plugins or {}).items():
        if pm.get_plugin(name) is None:
            pm.register(plugin, name=name)
    return pm


@pytest.fixture
def tfopt_pm(tmp_path) -> TfoptPluginManager:
    """A plugin manager with the built-ins and every installed plugin that loads."""
    return isolated_plugin_manager(tmp_path)


@pytest.fixture
def run_context(tmp_path) -> Callable[..., RunContext]:
    """Factory: ``run_context(family, source=None, **options)`` -> a RunContext in a fresh dir under tmp_path."""
    counter = itertools.count()

    def make(family: str = "test", source: str | None = None, **options: Any) -> RunContext:
        work_dir = tmp_path / f"run-{next(counter)}"
        work_dir.mkdir()
        return RunContext(family=family, source=source, work_dir=work_dir, options=dict(options))

    return make


class _CaptureInputs:
    """Wraps make_dummy_inputs to keep the arrays (the report keeps only their shapes)."""

    def __init__(self) -> None:
        self.feeds: list[dict[str, np.ndarray]] | None = None

    @hookimpl(wrapper=True)
    def make_dummy_inputs(self, ctx):
        feeds = yield
        self.feeds = feeds
        return feeds


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: with 2 threads, torch's OpenMP workers wait on
    each other whenever another process holds a core (4 ms per tiny matmul, 3x slower tests).
    Restored after each module, so other directories' tests keep torch's default. Applies to
    the tests of a conftest that imports it (``from tfopt.testing import one_torch_thread``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _graph_op_counts(model_path: Path) -> dict[str, int]:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return dict(Counter(node.op_type for node in graph.node))


def _leftover_in_file(model_path: Path, disabled: Any) -> list[str]:
    """Counted from the written file, not taken from the adapter's FuseResult (which could claim anything)."""
    from .graph.io import load_model
    from .graph.leftovers import leftover_lines, leftover_primitives

    disabled = disabled.split(",") if isinstance(disabled, str) else list(disabled or ())
    return leftover_lines(leftover_primitives(load_model(model_path)), set(disabled))


def _check_parity_was_checked(ctx: RunContext, exported: ExportResult, fused: FuseResult, final: PrecisionResult) -> None:
    """Validation must have compared numbers, or the adapter must say why it cannot (rule bisection needs them)."""
    if not ctx.option("validate", True) or exported.info.parity_not_checked:
        return
    for stage, result in (("fuse", fused), ("convert_precision", final)):
        validation = result.validation
        if validation is not None and not validation.feeds:
            raise AssertionError(
                f"{stage}: validation did not compare {Path(result.model_path).name}'s numbers with its input "
                f"({'; '.join(validation.notes) or 'no feeds'}): give the model's axes sizes that fit in "
                "ModelInfo.axis_sizes, or say why parity cannot be checked in ModelInfo.parity_not_checked"
            )


def check_adapter(
    name: str,
    source: str | None = None,
    options: dict[str, Any] | None = None,
    *,
    work_dir: str | Path | None = None,
    pm: TfoptPluginManager | None = None,
    expect_full_fusion: bool = True,
    verbose: bool = False,
) -> RunOutcome:
    """Run the whole pipeline on adapter ``name`` and assert what every adapter must guarantee.

    Each stage returns its result type; the files it names exist; the IO spec matches
    the exported graph; fused-op counts match the fused file; every expected fusion
    happened (unless ``expect_full_fusion=False``); the dummy inputs cover every graph
    input at two or more shapes, with padding when there is an attention mask;
    verification passes; validation compared the written models' numbers with their inputs
    (``Validation.feeds`` > 0: a model whose axes the generic sizes do not fit needs
    ``ModelInfo.axis_sizes``; one that cannot run here says why in
    ``ModelInfo.parity_not_checked``); report.json is complete. Raises AssertionError on the first
    broken promise; returns the run's outcome for further checks.

    The libraries the run drives are silenced as in ``tfopt run`` (no torch trace DEBUG
    records, warnings or ONNX Runtime log in pytest's captured output); ``verbose=True``
    lets them through, as ``tfopt -v`` does.
    """
    work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"tfopt-check-{name}-"))
    pm = pm or isolated_plugin_manager(work_dir)
    capture = _CaptureInputs()
    pm.register(capture, name="tfopt-testing-capture")
    options = {**QUICK_OPTIONS, **(options or {})}
    if not expect_full_fusion:  # the run's own check would call it incomplete
        options.setdefault("allow_missing_fusions", True)
    ctx = RunContext(family=name, source=source, work_dir=work_dir / "run", options=options)
    try:
        try:
            with third_party_output(verbose):
                outcome = run_pipeline(pm, name, ctx, raise_on_failure=False)
        except TfoptError as exc:
            raise AssertionError(f"adapter {name!r}: the pipeline failed: {exc}") from exc
    finally:
        pm.unregister(capture)
    results = ctx.results

    exported = results.get("export")
    assert isinstance(exported, ExportResult), f"export returned {type(exported).__name__}"
    assert Path(exported.model_path).is_file(), f"export: {exported.model_path} does not exist"
    assert Path(exported.model_path).resolve().is_relative_to(Path(ctx.work_dir).resolve()), (
        f"export wrote {exported.model_path} outside the work dir {ctx.work_dir}"
    )
    declared = {spec.name for spec in graph_inputs(exported.model_path)}
    assert set(exported.io.inputs) == declared, f"export: IOSpec inputs {sorted(exported.io.inputs)} != graph inputs {sorted(declared)}"
    assert exported.info.model_type, "export: ModelInfo.model_type is empty"

    fused = results.get("fuse")
    assert isinstance(fused, FuseResult), f"fuse returned {type(fused).__name__}"
    assert Path(fused.model_path).is_file(), f"fuse: {fused.model_path} does not exist"
    graphs = [Path(fused.model_path), *map(Path, fused.companions.values())]
    for path in graphs[1:]:
        assert path.is_file(), f"fuse: companion graph {path} does not exist"
    actual_counts = dict(sum((Counter(_graph_op_counts(path)) for path in graphs), Counter()))
    assert fused.op_counts == actual_counts, f"fuse: reported op counts {fused.op_counts} != the file's {actual_counts}"  # summed over companions
    if expect_full_fusion:
        assert not fused.missing, f"fuse: expected fusions did not happen: {fused.missing}"
        left = [line for path in graphs for line in _leftover_in_file(path, ctx.option("disabled", ()))]
        assert not left, f"fuse: the fused files still hold primitives no fusion replaced: {left}"
        for key, want in fused.expected.items():
            have = sum(actual_counts.get(op, 0) for op in key.split("|"))
            assert have >= want, f"fuse: {key} expected {want}, found {have}"

    final = results.get("convert_precision")
    assert isinstance(final, PrecisionResult), f"convert_precision returned {type(final).__name__}"
    assert Path(final.model_path).is_file(), f"convert_precision: {final.model_path} does not exist"
    assert final.precision == ctx.option("precision", "fp32"), f"convert_precision: got {final.precision}"

    feeds = capture.feeds
    assert feeds and len(feeds) >= 2, "make_dummy_inputs: want several input shapes"
    for feed in feeds:
        assert declared <= set(feed), f"make_dummy_inputs: a feed lacks {sorted(declared - set(feed))}"
    if "attention_mask" in declared:
        assert any(not np.all(feed["attention_mask"]) for feed in feeds), "make_dummy_inputs: no padded row in any mask"

    _check_parity_was_checked(ctx, exported, fused, final)

    verified = results.get("verify")
    assert isinstance(verified, VerifyResult), f"verify returned {type(verified).__name__}"
    assert verified.passed, f"verify failed: max abs {verified.overall.max_abs} vs tolerance {verified.tolerance}"
    assert verified.cases, "verify: no per-case statistics"

    if ctx.option("benchmark", True):
        bench = results.get("benchmark")
        assert isinstance(bench, BenchResult), f"benchmark returned {type(bench).__name__}"
        engines = {row.engine for row in bench.rows}
        assert {"ort:raw", "ort:tfopt"} <= engines, f"benchmark: engines {sorted(engines)} lack ort:raw/ort:tfopt"
        assert all(row.p50_ms > 0 for row in bench.rows), "benchmark: a p50 is not positive"

    report = json.loads((Path(ctx.work_dir) / REPORT_FILE).read_text())
    assert report["schema_version"] == SCHEMA_VERSION and report["status"] == "passed", f"report status {report['status']}"
    return outcome
