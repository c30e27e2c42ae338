"""One run: export -> fuse -> convert_precision -> make_dummy_inputs -> verify -> benchmark.

Each stage is called through the selected adapter's subset caller (the adapter plus
every extension, never another adapter), timed, announced through ``ctx.progress``
and checked: a stage with no implementation, or one that returns the wrong type, is a
one-line TfoptError naming the stage and the plugins that implement it
(:class:`tfopt.stages.StageRunner`).

Data flows one way: this module runs the stages, ``report.py`` sums their results into
report.json, and ``html_report.py`` draws the page from that report; neither of them
imports this module, and ``profile.py`` takes StageRunner from ``tfopt.stages``
(``tests/test_meta.py::test_the_house_imports_flow_one_way``).

Output layout of ``ctx.work_dir``: ``exported.onnx`` (+ ``.data``), ``optimized.onnx``
(+ ``optimized.<precision>.onnx`` for fp16/int8) and ``report.json``, which is
written even when verification fails or a later stage errors.

A run directory holds one run's results only: a run first removes what an earlier run
wrote there (:func:`clear_previous_outputs`), so neither a stale model nor an old
``passed`` report survives a run that fails. Files tfopt did not write are left alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from .errors import FusionIncomplete, TfoptError, VerificationFailed
from .feeds import graph_inputs
from .plugins import active_plugin_names, adapter_caller, adapter_names
from .report import build_report, write_report
from .results import PAGE_FILE, REPORT_FILE, BenchResult, ExportResult, IOSpec, ModelInfo, RunContext, VerifyResult

# StageRunner and the stage names live in tfopt.stages, which profile.py takes them from without
# importing this module; they stay importable from here (``from tfopt.pipeline import StageRunner``).
from .stages import RESULT_TYPES, STAGE_ORDER, TRACEBACK_ENV, StageRunner, _one_line  # noqa: F401


@dataclass
class RunOutcome:
    report: dict[str, Any]
    report_path: Path
    passed: bool
    failure: str | None = None  # why it did not pass, one line (verification, or validation that compared nothing)
    status: str = "passed"  # report.json's: passed, failed (verification), incomplete (a fusion did not happen)


# Names tfopt and its adapters write into a run directory (the ``.data`` external weights
# included), and the hidden temp files/dirs of its atomic writes (``.report.json.x1y2``).
_OWN_OUTPUT = re.compile(
    r"^(exported|optimized)(\.[\w-]+)*\.onnx(\.data)?$|^report\.html$|^profile\.json$|^profile\.(raw|optimized)\.trace\.json$"
)
_OWN_TEMP = re.compile(r"^\.(exported|optimized)(\.[\w-]+)*\.onnx\.\w+$|^\.(report\.json|report\.html|profile\.json)\.\w+$")


def _written_by_tfopt(report_path: Path) -> dict[str, Any] | None:
    """The earlier report as a dict, None when there is none; a foreign report.json is an error."""
    if not report_path.is_file():
        return None
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    if not isinstance(report, dict) or "tfopt_version" not in report:
        raise TfoptError(
            f"{report_path}: not a tfopt report; refusing to overwrite it (choose another --output directory)"
        )
    return report


def previous_outputs(path: str | os.PathLike) -> list[Path]:
    """What an earlier tfopt run left in ``path``: its report, the models it names, tfopt's own file names.

    Raises when ``report.json`` exists but is not tfopt's, so a user's file is never taken
    for an output. Only entries directly inside ``path`` count.
    """
    path = Path(path)
    if not path.is_dir():
        return []
    report_path = path / REPORT_FILE
    report = _written_by_tfopt(report_path)
    found = {report_path} if report is not None else set()
    for value in ((report or {}).get("outputs") or {}).values():
        if isinstance(value, str) and value:
            named = Path(value) if Path(value).is_absolute() else path / value
            if named.parent.resolve() == path.resolve():
                found.update({named, named.with_name(named.name + ".data")})
    for entry in path.iterdir():
        if _OWN_OUTPUT.match(entry.name) or _OWN_TEMP.match(entry.name):
            found.add(entry)
    return sorted(entry for entry in found if entry.exists() or entry.is_symlink())


def clear_previous_outputs(path: str | os.PathLike, progress=None) -> list[Path]:
    """Remove :func:`previous_outputs` of ``path`` (the report first); return what was removed."""
    removed = previous_outputs(path)
    report_path = Path(path) / REPORT_FILE
    for entry in sorted(removed, key=lambda entry: entry != report_path):  # no report may outlive its models
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            raise TfoptError(f"{entry}: cannot remove the output of an earlier run ({exc.strerror or exc})") from None
    if removed and progress is not None:
        progress(f"removed the earlier run's {', '.join(entry.name for entry in removed)} from {path}")
    return removed


def prepare_output_dir(path: str | os.PathLike) -> bool:
    """Create the output dir; True when it did not exist before. Refuse files and unwritable places."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TfoptError(f"{path}: exists and is not a directory; --output takes a directory")
    existed = path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TfoptError(f"{path}: cannot create the output directory ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK):
        raise TfoptError(f"{path}: output directory is not writable")
    return not existed


def _plugin_identity(pm: pluggy.PluginManager, adapter: str | None) -> tuple[dict[str, Any] | None, list[str]]:
    records = getattr(pm, "records", {})
    adapters = set(adapter_names(pm))
    extensions = sorted(name for name in active_plugin_names(pm) if name not in adapters)
    if adapter is None:
        return None, extensions
    record = records.get(adapter)
    return (
        {
            "name": adapter,
            "distribution": getattr(record, "distribution", None),
            "version": getattr(record, "version", None),
        },
        extensions,
    )


def _outputs(ctx: RunContext) -> dict[str, Path | None]:
    results = ctx.results
    exported = results.get("export")
    fused = results.get("fuse")
    final = results.get("convert_precision")
    return {
        "exported": exported.model_path if exported else None,
        "optimized": fused.model_path if fused else None,
        "final": final.model_path if final else None,
        "report": Path(ctx.work_dir) / REPORT_FILE,
        **results.get("extra_outputs", {}),  # RunContext.add_output
    }


def _write(pm, adapter, ctx, runner, status, error=None) -> tuple[dict[str, Any], Path]:
    identity, extensions = _plugin_identity(pm, adapter)
    report = build_report(
        ctx,
        adapter=identity,
        extensions=extensions,
        stages=runner.stages,
        outputs=_outputs(ctx),
        status=status,
        error=error,
    )
    page = _html_page(report, ctx)
    path = write_report(report, Path(ctx.work_dir) / REPORT_FILE)
    if page is not None:
        from .html_report import write_page

        write_page(page, Path(ctx.work_dir) / PAGE_FILE)
    return report, path


def _html_page(report: dict[str, Any], ctx: RunContext) -> str | None:
    """report.html's text; a page that cannot be drawn is a warning in the report, never a failed run."""
    try:
        from .html_report import page_for_report

        return page_for_report(report, ctx.work_dir)
    except Exception as exc:  # noqa: BLE001 (the run's results stand without their picture)
        report["warnings"].append(f"report.html not written: {_one_line(exc)}")
        return None


def _require_file(stage: str, path: Path) -> None:
    if not Path(path).is_file():
        raise TfoptError(f"stage {stage!r} reported {path}, but no such file exists")


def _export_or_clean_up(runner: "StageRunner", ctx: RunContext, created: bool) -> ExportResult:
    """The export stage; an output dir this run created is removed again if export fails."""
    try:
        exported = runner("export")
        _require_file("export", exported.model_path)
        if ctx.option("precision") is None:  # the export hook may set its family's default (qat: int8)
            ctx.options["precision"] = "fp32"
    except BaseException:
        if created:
            shutil.rmtree(ctx.work_dir, ignore_errors=True)
        raise
    return exported


def run_export(pm: pluggy.PluginManager, adapter: str, ctx: RunContext) -> ExportResult:
    """The export stage alone (``tfopt export``); writes report.json with status "exported"."""
    clear_previous_outputs(ctx.work_dir, ctx.progress)
    created = prepare_output_dir(ctx.work_dir)
    runner = StageRunner(pm, adapter, ctx)
    exported = _export_or_clean_up(runner, ctx, created)
    _write(pm, adapter, ctx, runner, "exported")
    return exported


def run_pipeline(
    pm: pluggy.PluginManager, adapter: str, ctx: RunContext, *, raise_on_failure: bool = True
) -> RunOutcome:
    """Run every stage on ``adapter``; report.json is written whatever happens after export.

    A failed verification raises :class:`VerificationFailed` after the report is
    written (or, with ``raise_on_failure=False``, returns ``passed=False``). An
    output dir this call created is removed again when export itself fails, so a
    bad model name leaves nothing behind. What an earlier run wrote into the dir is
    removed first, even when this call then fails (an unknown adapter included), so
    ``tfopt verify DIR`` never passes on results this run did not make.
    """
    clear_previous_outputs(ctx.work_dir, ctx.progress)
    adapter_caller(pm, adapter, "export")  # unknown adapter: fail before creating the dir
    created = prepare_output_dir(ctx.work_dir)
    runner = StageRunner(pm, adapter, ctx)
    exported = _export_or_clean_up(runner, ctx, created)
    try:
        fused = runner("fuse", exported=exported)
        _require_file("fuse", fused.model_path)
        final = runner("convert_precision", fused=fused)
        _require_file("convert_precision", final.model_path)
        inputs = runner("make_dummy_inputs", exported=exported)
        emulation = getattr(final, "emulation_path", None)  # bf16: verified through its CPU emulation
        if emulation is not None:
            ctx.add_output("final_emulated", emulation)
        verified = runner("verify", exported=exported, model_path=emulation or final.model_path, inputs=inputs)
        timed = [done for stage, default, done in (("benchmark", True, "benchmarked"), ("profile", False, "profiled"))
                 if ctx.option(stage, default)]
        if emulation is not None and timed:  # an emulation's time says nothing of the model's
            ctx.progress(f"not {' or '.join(timed)}: {Path(final.model_path).name} is for the CUDA provider (no CPU kernels)")
        elif "benchmarked" in timed:
            models = {"ort:raw": exported.model_path, "ort:tfopt": final.model_path}
            runner("benchmark", exported=exported, models=models)
        if emulation is None and "profiled" in timed:
            _profile_stage(pm, adapter, ctx, runner, exported, final.model_path)
    except TfoptError as exc:
        _write(pm, adapter, ctx, runner, "error", str(exc))
        raise
    except KeyboardInterrupt:
        _write(pm, adapter, ctx, runner, "error", "interrupted")
        raise
    from .graph.fusion import fusion_shortfall  # the fuse stage has imported the toolkit already

    unchecked = parity_not_checked(ctx, exported, fused, final)
    unfused = [] if ctx.option("allow_missing_fusions", False) else fusion_shortfall(getattr(fused, "missing", None) or [])
    verified_ok = verified.passed and unchecked is None
    status = "failed" if not verified_ok else "incomplete" if unfused else "passed"
    report, path = _write(pm, adapter, ctx, runner, status, unchecked)
    if status == "failed":
        failure = f"{unchecked}; report kept at {path}" if unchecked else verification_message(verified, path)
    else:
        failure = incomplete_message(unfused, path) if unfused else None
    if failure and raise_on_failure:
        raise (VerificationFailed if status == "failed" else FusionIncomplete)(failure)
    return RunOutcome(report=report, report_path=path, passed=status == "passed", failure=failure, status=status)


def incomplete_message(unfused: list[str], report_path: Path | None = None) -> str:
    """The one line of a run that verified but left a fusion undone (status "incomplete", exit 3)."""
    more = f" (+{len(unfused) - 1} more)" if len(unfused) > 1 else ""
    kept = f"; report kept at {report_path}" if report_path else ""
    return f"fusion incomplete: {unfused[0]}{more}; --allow-missing-fusions accepts it{kept}"


def parity_not_checked(ctx: RunContext, exported: ExportResult, fused: Any, final: Any) -> str | None:
    """Why the run fails although verify passed: validation compared no numbers of a model it wrote.

    Without them a fusion rule that broke the model could not be found (bisection needs them),
    so the promise of a validated model does not hold. Not a failure with ``--no-validate``, or
    when the adapter says why its model cannot be compared (``ModelInfo.parity_not_checked``).
    """
    if not ctx.option("validate", True) or exported.info.parity_not_checked:
        return None
    for result in (fused, final):
        validation = getattr(result, "validation", None)
        if validation is not None and validation.passed and not validation.feeds:
            why = "; ".join(validation.notes) or "no generated input ran"
            return (
                f"validation compared no numbers of {Path(result.model_path).name} with the model it came from ({why}); "
                "the adapter must size the axes in ModelInfo.axis_sizes (or pass --option 'axis_sizes={...}'), "
                "or say why in ModelInfo.parity_not_checked"
            )
    return None


def _profile_stage(pm, adapter, ctx: RunContext, runner: StageRunner, exported: ExportResult, final_model: Path) -> None:
    """``tfopt run --profile``: ONNX Runtime's profiler on the raw and the final model, kept as ``profile``."""
    from .profile import profile_run

    ctx.progress("profiling the raw and the optimized model ...")
    start = time.perf_counter()
    try:
        ctx.results["profile"] = profile_run(pm, adapter, ctx, exported, final_model)
    except TfoptError as exc:
        raise TfoptError(f"profile: {exc}") from exc
    runner.stages["profile"] = {"seconds": round(time.perf_counter() - start, 4), "implementations": ["tfopt.profile"]}


def verification_message(verified: VerifyResult, report_path: Path | None = None) -> str:
    overall = verified.overall
    kept = f"; report kept at {report_path}" if report_path else ""
    if verified.failure:
        return f"verification failed ({verified.precision}): {verified.failure}{kept}"
    return (
        f"verification failed: max abs diff {overall.max_abs:.3g} vs tolerance {verified.tolerance:g}"
        f" ({verified.precision}), {overall.nan_count} NaN{kept}"
    )


def export_result_from_file(model_path: str | os.PathLike) -> ExportResult:
    """An ExportResult for a plain ONNX file, so the generic stages can verify/benchmark it."""
    import onnx

    specs = graph_inputs(model_path)
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return ExportResult(
        model_path=Path(model_path),
        io=IOSpec(inputs={spec.name: spec.dtype.name for spec in specs}, outputs=[o.name for o in graph.output]),
        info=ModelInfo(model_type="unknown"),
        exporter="file",
    )


def verify_models(
    pm: pluggy.PluginManager,
    adapter: str | None,
    ctx: RunContext,
    exported: ExportResult,
    model_path: Path,
) -> VerifyResult:
    """make_dummy_inputs + verify only (``tfopt verify``); ``adapter`` None = generic stages."""
    runner = StageRunner(pm, adapter, ctx)
    inputs = runner("make_dummy_inputs", exported=exported)
    return runner("verify", exported=exported, model_path=model_path, inputs=inputs)


def benchmark_models(
    pm: pluggy.PluginManager,
    adapter: str | None,
    ctx: RunContext,
    exported: ExportResult,
    models: dict[str, Path],
) -> BenchResult:
    """The benchmark stage only (``tfopt bench``)."""
    return StageRunner(pm, adapter, ctx)("benchmark", exported=exported, models=models)
