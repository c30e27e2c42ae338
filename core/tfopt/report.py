"""report.json (the sum of the stage results) and the human summary printed after a run.

The schema is documented field by field in ``docs/report.md``; bump
:data:`SCHEMA_VERSION` when a field changes meaning or disappears.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from . import __version__
from .environment import environment
from .errors import TfoptError
from .hookspecs import HOOK_NAMES
from .results import PAGE_FILE, PROFILE_FILE, REPORT_FILE, ExportResult, IOSpec, ModelInfo, RunContext, to_jsonable

SCHEMA_VERSION = 1
MISSING_PREFIX = "expected fusion did not happen: "

# Contrib ops worth showing in the summary when the family states no expectations.
FUSED_OP_TYPES = (
    "EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization",
    "LayerNormalization", "BiasGelu", "FastGelu", "Gelu", "GroupQueryAttention",
)


def _portable(obj: Any, base: Path) -> Any:
    """Like ``to_jsonable``, with paths inside ``base`` written relative to it (a run dir can move)."""
    if isinstance(obj, Path):
        try:
            return str(obj.resolve().relative_to(base.resolve()))
        except ValueError:
            return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _portable(getattr(obj, f.name), base) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, dict):
        return {str(key): _portable(value, base) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_portable(value, base) for value in obj]
    return _finite(to_jsonable(obj))


def _finite(value: Any) -> Any:
    """inf/NaN are not JSON: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def warnings_for(results: dict[str, Any]) -> list[str]:
    """Rules validation left out, every expected fusion that did not happen, then plugins' ``results['warnings']``."""
    from .graph.validate import dropped_rule_line

    found = []
    fused = results.get("fuse")
    found.extend(dropped_rule_line(dropped) for dropped in getattr(fused, "dropped_rules", None) or [])
    for entry in getattr(fused, "missing", None) or []:
        found.append(MISSING_PREFIX + entry)
    found.extend(str(item) for item in results.get("warnings", []) or [])
    return found


def build_report(
    ctx: RunContext,
    *,
    adapter: dict[str, Any] | None,
    extensions: list[str],
    stages: dict[str, dict[str, Any]],
    outputs: dict[str, Path | None],
    status: str,
    error: str | None = None,
) -> dict[str, Any]:
    """The report dict for one run (``status``: passed, failed, error, exported, ...)."""
    base = Path(ctx.work_dir)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tfopt_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": status,
        "error": error,
        "family": ctx.family,
        "source": ctx.source,
        "options": _portable(ctx.options, base),
        "plugins": {"adapter": adapter, "extensions": extensions},
        "outputs": {key: (_portable(Path(value), base) if value is not None else None) for key, value in outputs.items()},
        "stages": _portable(stages, base),
    }
    for hook in HOOK_NAMES:
        report[hook] = _portable(ctx.results[hook], base) if hook in ctx.results else None
    report["profile"] = _portable(ctx.results["profile"], base) if "profile" in ctx.results else None
    report["environment"] = environment()
    report["warnings"] = warnings_for(ctx.results)
    return report


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write JSON atomically: a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n"
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as tmp:
            tmp.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes it 0600; a report is for everyone
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_report(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        raise TfoptError(f"{run_dir}: no {REPORT_FILE} here; run `tfopt run --output {run_dir}` first")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TfoptError(f"{path}: not a tfopt report ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(report, dict) or report.get("schema_version") != SCHEMA_VERSION:
        raise TfoptError(f"{path}: not a tfopt report of schema version {SCHEMA_VERSION}")
    return report


def resolve_output(report: dict[str, Any], run_dir: str | os.PathLike, key: str) -> Path | None:
    """An ``outputs`` entry as a path; relative entries are relative to the run dir."""
    value = (report.get("outputs") or {}).get(key)
    if value is None:
        return None
    path = Path(value)
    return path if path.is_absolute() else Path(run_dir) / path


def runnable_final(report: dict[str, Any], run_dir: str | os.PathLike) -> Path | None:
    """The final model, or the CPU emulation a bf16 run wrote beside it (``final_emulated``): what verify
    and generation can run here."""
    return resolve_output(report, run_dir, "final_emulated") or resolve_output(report, run_dir, "final")


def export_result_from_report(report: dict[str, Any], run_dir: str | os.PathLike) -> ExportResult:
    """Rebuild the export stage's result, so later stages can run again on a run dir."""
    data = report.get("export")
    if not data:
        raise TfoptError(f"{run_dir}: the report has no export result")
    io = data["io"]
    model_path = Path(data["model_path"])
    return ExportResult(
        model_path=model_path if model_path.is_absolute() else Path(run_dir) / model_path,
        io=IOSpec(
            inputs=dict(io["inputs"]),
            outputs=list(io["outputs"]),
            dynamic_axes={name: {int(axis): label for axis, label in axes.items()} for name, axes in io.get("dynamic_axes", {}).items()},
        ),
        info=ModelInfo(**data["info"]),
        exporter=data.get("exporter", ""),
        seconds=float(data.get("seconds", 0.0)),
    )


# ----------------------------------------------------------------------------- human summary


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    def line(cells):
        return indent + "  ".join(str(cell).ljust(width) if i == 0 else str(cell).rjust(width) for i, (cell, width) in enumerate(zip(cells, widths)))
    return [line(headers), indent + "  ".join("-" * width for width in widths)] + [line(row) for row in rows]


def _number(value: Any, fmt: str = ".2e") -> str:
    return value if isinstance(value, str) else format(value, fmt)


def fusion_lines(fused: dict[str, Any]) -> list[str]:
    """Fused ops found vs expected, then the primitives the graph still holds (counted, not claimed)."""
    return _fused_op_lines(fused) + _leftover_lines(fused)


def _fused_op_lines(fused: dict[str, Any]) -> list[str]:
    op_counts = fused.get("op_counts", {})
    expected = fused.get("expected", {})
    if expected:
        rows = []
        for key, want in expected.items():
            have = sum(op_counts.get(op_type, 0) for op_type in key.split("|"))
            rows.append([key, str(have), str(want), "ok" if have >= want else "MISSING"])
        return ["fused ops (found vs expected):"] + _table(["op", "found", "expected", ""], rows)
    shown = [[op, str(count)] for op, count in op_counts.items() if op in FUSED_OP_TYPES]
    if not shown:
        return ["fused ops: none (the family states no expected counts)"]
    return ["fused ops:"] + _table(["op", "found"], shown)


def _leftover_lines(fused: dict[str, Any]) -> list[str]:
    """'left unfused: none' or each kind with its count (a report older than the field: nothing)."""
    if "leftover" not in fused:
        return []
    leftover = fused.get("leftover") or {}
    counted = ", ".join(f"{count} {kind}" for kind, count in leftover.items()) or "none"
    return [f"primitives left unfused: {counted}"]


def validation_summary(validation: dict[str, Any]) -> str:
    """The validation line for a report's (JSON) validation record."""
    from .graph.validate import validation_line
    from .results import Validation

    return validation_line(Validation(**validation))


def parity_line(verified: dict[str, Any]) -> str:
    overall = verified["overall"]
    verdict = "PASS" if verified["passed"] else "FAIL"
    return (
        f"parity vs {verified['reference']} ({verified['precision']}, tolerance {_number(verified['tolerance'], 'g')}, "
        f"{len(verified.get('cases', []))} input shapes): max abs {_number(overall['max_abs'])}, "
        f"p99 abs {_number(overall['p99_abs'])}, max rel {_number(overall['max_rel'])}, NaN {overall['nan_count']} -> {verdict}"
    )


def _ratio(value: float) -> str:
    """0.54x; small ratios keep two significant digits (0.0037x) instead of reading 0.00x."""
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _row_shape(row: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    """A row's input shape by axis name; reports without ``shape`` have batch x sequence."""
    shape = row.get("shape") or {"batch": row["batch_size"], "sequence": row["sequence_length"]}
    return tuple(shape.items())


def latency_lines(bench: dict[str, Any]) -> list[str]:
    rows = bench.get("rows", [])
    if not rows:
        return []
    engines = list(dict.fromkeys(row["engine"] for row in rows))
    shapes = list(dict.fromkeys(_row_shape(row) for row in rows))
    p50 = {(row["engine"], _row_shape(row)): row["p50_ms"] for row in rows}
    ratios = [(a, b) for a, b in (("ort:tfopt", "ort:raw"), ("ort:tfopt", "torch")) if a in engines and b in engines]
    axes = list(dict.fromkeys(axis for shape in shapes for axis, _ in shape))
    short = {"batch": "batch", "sequence": "seq"}
    headers = [" x ".join(short.get(axis, axis) for axis in axes)] + engines + [f"{a}/{b}" for a, b in ratios]
    table = []
    for shape in shapes:
        sizes = dict(shape)
        cells = [" x ".join(str(sizes.get(axis, "-")) for axis in axes)]
        for engine in engines:
            value = p50.get((engine, shape))
            cells.append("-" if value is None else f"{value:.3f}")
        for a, b in ratios:
            top, bottom = p50.get((a, shape)), p50.get((b, shape))
            cells.append(_ratio(top / bottom) if top and bottom else "-")
        table.append(cells)
    return [f"latency p50 in ms ({bench.get('device', 'cpu')}):"] + _table(headers, table)


def summary_text(report: dict[str, Any], run_dir: str | os.PathLike | None = None) -> str:
    """What `tfopt run` prints at the end: fusion vs expected, parity, latency, warnings, files."""
    lines = [
        f"tfopt {report['status'].upper()}: {report['family']} on {report['source'] or 'its default model'}"
        f" ({(report.get('options') or {}).get('precision', 'fp32')})"
    ]
    if report.get("fuse"):
        lines += fusion_lines(report["fuse"])
    for stage in ("fuse", "convert_precision"):
        if (report.get(stage) or {}).get("validation"):
            lines.append(f"{report[stage]['model_path']}: " + validation_summary(report[stage]["validation"]))
    lines += [f"  {note}" for note in (report.get("convert_precision") or {}).get("notes") or []]  # how it was converted
    if report.get("verify"):
        lines.append(parity_line(report["verify"]))
        lines += [f"  {note}" for note in report["verify"].get("notes") or []]  # the adapter's further checks
    if report.get("benchmark"):
        lines += latency_lines(report["benchmark"])
    for warning in report.get("warnings", []):
        lines.append(f"warning: {warning}")
    if report.get("error"):
        lines.append(f"error: {report['error']}")
    files = [value for value in (report.get("outputs") or {}).values() if value]
    # Written beside report.json but not among its outputs: the page, a --profile summary.
    files += [name for name in (PAGE_FILE, PROFILE_FILE) if run_dir is not None and (Path(run_dir) / name).is_file()]
    if files:
        where = f" in {run_dir}" if run_dir is not None else ""
        lines.append(f"files{where}: " + ", ".join(dict.fromkeys(files)))
    return "\n".join(lines)
