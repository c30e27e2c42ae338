"""report.html: one self-contained page per run, or several runs side by side.

Everything is inline: the plots are SVG drawn by matplotlib (a maintained library whose
SVG needs no script, no font and no network to show, prints and scales cleanly, and
whose figures the tests can count in a browser), the style is one ``<style>`` element,
and there is no JavaScript at all, so the page opens the same in any browser, offline,
years later, attached to a mail. The page is built from report.json alone (plus
``profile.json`` beside it when the run was profiled separately), so
``tfopt report`` can redraw any run directory, and ``tfopt run`` writes one at its end.

Each plot is a ``<figure class="plot" data-plot="KIND">`` holding one ``<svg>``; a
section without data says so in words instead of drawing an empty axis.
"""

from __future__ import annotations

import datetime
import html
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import TfoptError
from .results import PAGE_FILE, PROFILE_FILE  # noqa: F401 (PAGE_FILE: tfopt.html_report.PAGE_FILE stays importable)

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
CONTRIB_COLOR, STANDARD_COLOR = "#2ca02c", "#9e9e9e"
STAT_FIELDS = ("max_abs", "p50_abs", "p90_abs", "p99_abs", "max_rel", "nan_count", "top1_agreement")
TOP_OP_TYPES = 14  # op types drawn in a profile plot; the rest are summed as "other"

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header,main{max-width:1180px;margin:0 auto;padding:0 20px}
header{padding-top:18px}h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px}.muted{color:#666}.run{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:4px 18px 14px;margin:18px 0}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}th,td{border-bottom:1px solid #e5e5e5;padding:3px 10px;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}td.text{text-align:left;max-width:560px;overflow-wrap:anywhere}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}.warn{color:#a15c00}
figure.plot{margin:8px 0 14px}figure.plot svg{width:100%;max-width:880px;height:auto;display:block}
figcaption{color:#555;font-size:12.5px;max-width:880px}ul.warnings li{color:#a15c00}code{font-size:12.5px}
nav a{margin-right:12px}table.what td:first-child{white-space:nowrap}
"""


@dataclass
class RunData:
    """One run directory as the page sees it."""

    name: str  # short label: the directory's name (made unique among the runs shown)
    path: Path
    report: dict[str, Any]
    profile: dict[str, Any] | None


def load_run(run_dir: str | os.PathLike) -> RunData:
    """report.json of ``run_dir`` (and its profile: in the report, else ``profile.json`` beside it)."""
    from .report import load_report

    run_dir = Path(run_dir)
    report = load_report(run_dir)
    profile = report.get("profile")
    if profile is None and (run_dir / PROFILE_FILE).is_file():
        try:
            profile = json.loads((run_dir / PROFILE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TfoptError(f"{run_dir / PROFILE_FILE}: not a tfopt profile ({exc})") from None
    return RunData(run_dir.resolve().name or str(run_dir), run_dir, report, profile)


def _unique_names(runs: list[RunData]) -> None:
    """Two runs named ``out`` become ``a/out`` and ``b/out``; still equal, ``out #2``."""
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1 and run.path.resolve().parent.name:
            run.name = f"{run.path.resolve().parent.name}/{run.name}"
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} #{seen[run.name]}"


# ----------------------------------------------------------------------------- plots


class Plots:
    """Draws matplotlib figures as inline SVG, each with ids no other figure on the page shares."""

    def __init__(self) -> None:
        import matplotlib

        self._matplotlib = matplotlib
        self.count = 0

    def settings(self):
        """Text as text (small, selectable), stable ids, and no mathtext: a "$" in a run's name stays a "$"."""
        return self._matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "tfopt", "text.parse_math": False})

    def figure(self, width: float = 8.0, height: float = 3.2):
        from matplotlib.figure import Figure

        return Figure(figsize=(width, height), layout="constrained")

    def svg(self, figure) -> str:
        self.count += 1
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
        text = buffer.getvalue()
        text = text[text.index("<svg"):]  # no XML declaration or DOCTYPE inside HTML
        text = re.sub(r"<style[^>]*>.*?</style>", "", text, flags=re.DOTALL)  # its `*` rule would reach the page
        prefix = f"f{self.count}-"
        text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
        text = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m.group(1)}"', text)
        return re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", text)


def _figure_html(kind: str, svg: str, caption: str) -> str:
    return f'<figure class="plot" data-plot="{html.escape(kind)}">{svg}<figcaption>{caption}</figcaption></figure>'


def _log_axis(axis, plain: bool = False) -> None:
    """Log scale labelled ``1e-6`` (or ``0.1``, ``10`` when ``plain``); matplotlib's own labels are mathtext, off here."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    axis.set_major_locator(LogLocator(base=10, numticks=8))
    label = (lambda value: f"{value:g}") if plain else (lambda value: f"1e{round(math.log10(value))}")
    axis.set_major_formatter(FuncFormatter(lambda value, _: label(value) if value > 0 else ""))
    axis.set_minor_locator(NullLocator())  # minor log ticks cost more to lay out than they tell here


def _style_axes(axes) -> None:
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="x" if axes.get_xlabel().startswith("ms") else "y", color="#e6e6e6", linewidth=0.8)
    axes.set_axisbelow(True)


def _shape_label(row: dict[str, Any]) -> str:
    """``b1 s32``; decoder rows say their step and past: ``decode b1 past 16``."""
    if "past_length" in row or "step" in row:
        step = row.get("step", "")
        if step == "prompt" or not row.get("past_length"):
            return f"{step} b{row['batch_size']} s{row['sequence_length']}".strip()
        return f"{step} b{row['batch_size']} past {row['past_length']}".strip()
    if row.get("shape"):  # the input's axes by name: "b4" for fixed-size images, "b1 samples 16000"
        return " ".join(f"{CASE_KEYS.get(SHAPE_KEYS.get(axis, axis), axis + ' ')}{size}" for axis, size in row["shape"].items())
    return f"b{row['batch_size']} s{row['sequence_length']}"


SHAPE_KEYS = {"batch": "batch_size", "sequence": "sequence_length"}


CASE_KEYS = {"batch_size": "b", "sequence_length": "s", "past_length": "past "}


def _case_label(case: dict[str, Any]) -> str:
    """``b2 s16``; keys other than the shape's keep their name: ``b1 s1 past 7 step 3``."""
    parts = [f"{CASE_KEYS.get(key, key + ' ')}{value}" for key, value in case.items() if key not in STAT_FIELDS]
    return " ".join(parts) or "case"


def _positive(value: Any) -> float | None:
    """A float > 0 for a log axis; None for 0, "nan"/"inf" strings and missing values."""
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def plot_fusion(plots: Plots, fuse: dict[str, Any]) -> str | None:
    expected = fuse.get("expected") or {}
    counts = fuse.get("op_counts") or {}
    if not expected:
        return None
    keys = list(expected)
    found = [sum(counts.get(op, 0) for op in key.split("|")) for key in keys]
    figure = plots.figure(8.0, 0.5 + 0.42 * len(keys))
    axes = figure.subplots()
    positions = range(len(keys))
    axes.barh([p + 0.2 for p in positions], [expected[k] for k in keys], height=0.38, color="#c7c7c7", label="expected")
    colors = [CONTRIB_COLOR if have >= expected[key] else "#d62728" for key, have in zip(keys, found)]
    axes.barh([p - 0.2 for p in positions], found, height=0.38, color=colors, label="found")
    axes.set_yticks(list(positions), [key.replace("|", " | ") for key in keys], fontsize=8.5)
    axes.invert_yaxis()
    axes.set_xlabel("fused nodes in optimized.onnx")
    axes.legend(loc="lower right", fontsize=8, frameon=False)
    _style_axes(axes)
    return plots.svg(figure)


def plot_parity_cases(plots: Plots, verify: dict[str, Any]) -> str | None:
    cases = verify.get("cases") or []
    if not cases:
        return None
    figure = plots.figure(8.0, 3.0)
    axes = figure.subplots()
    positions = list(range(len(cases)))
    drawn = False
    for field, color, marker in (("max_abs", "#d62728", "o"), ("p99_abs", "#ff7f0e", "s"), ("p50_abs", "#1f77b4", "^")):
        values = [_positive(case.get(field)) for case in cases]
        points = [(p, v) for p, v in zip(positions, values) if v is not None]
        if points:
            axes.plot([p for p, _ in points], [v for _, v in points], marker, color=color, markersize=4.5, label=field.replace("_abs", ""), linestyle="none")
            drawn = True
    tolerance = _positive(verify.get("tolerance"))
    if tolerance:
        axes.axhline(tolerance, color="#555", linestyle="--", linewidth=1, label=f"tolerance {tolerance:g}")
        drawn = True
    if not drawn:
        return None
    axes.set_yscale("log")
    _log_axis(axes.yaxis)
    axes.set_ylabel("abs difference")
    if len(cases) <= 24:
        axes.set_xticks(positions, [_case_label(case) for case in cases], rotation=35, ha="right", fontsize=7.5)
    else:
        axes.set_xlabel(f"{len(cases)} input cases")
    figure.legend(fontsize=7.5, frameon=False, ncols=4, loc="outside upper center")
    _style_axes(axes)
    return plots.svg(figure)


def plot_parity_histogram(plots: Plots, verify: dict[str, Any]) -> str | None:
    histogram = verify.get("histogram") or {}
    counts, edges = histogram.get("counts"), histogram.get("log10_edges")
    if not counts or not edges or not any(counts):
        return None
    first = next(i for i, c in enumerate(counts) if c)
    last = len(counts) - 1 - next(i for i, c in enumerate(reversed(counts)) if c)
    lo, hi = max(0, first - 1), min(len(counts), last + 2)
    lefts = [10 ** e for e in edges[lo:hi]]
    widths = [10 ** edges[i + 1] - 10 ** edges[i] for i in range(lo, hi)]
    figure = plots.figure(8.0, 2.8)
    axes = figure.subplots()
    axes.bar(lefts, counts[lo:hi], width=widths, align="edge", color="#1f77b4", edgecolor="white", linewidth=0.5)
    axes.set_xscale("log")
    _log_axis(axes.xaxis)
    tolerance = _positive(verify.get("tolerance"))
    if tolerance:
        axes.axvline(tolerance, color="#555", linestyle="--", linewidth=1, label=f"tolerance {tolerance:g}")
        axes.legend(fontsize=8, frameon=False)
    axes.set_xlabel("abs difference (valid positions)")
    axes.set_ylabel("positions")
    _style_axes(axes)
    return plots.svg(figure)


def _latency_grid(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    engines = list(dict.fromkeys(row["engine"] for row in rows))
    shapes = list(dict.fromkeys(_shape_label(row) for row in rows))
    cells = {(row["engine"], _shape_label(row)): row for row in rows}
    return engines, shapes, cells


def _grouped_bars(axes, groups: list[str], series: list[tuple[str, list[float | None], list[tuple[float, float]] | None]]) -> None:
    """Bars per group and series; ``whiskers`` draws a line from p90 to p99 above each bar."""
    width = 0.8 / max(1, len(series))
    for index, (label, values, whiskers) in enumerate(series):
        offsets = [g - 0.4 + width * (index + 0.5) for g in range(len(groups))]
        points = [(o, v) for o, v in zip(offsets, values) if v is not None]
        axes.bar([o for o, _ in points], [v for _, v in points], width=width * 0.92, color=PALETTE[index % len(PALETTE)], label=label)
        if whiskers:
            for offset, value, whisker in zip(offsets, values, whiskers):
                if value is not None and whisker is not None:
                    axes.vlines(offset, whisker[0], whisker[1], color="#333", linewidth=1.1)
                    axes.hlines(whisker, offset - width * 0.2, offset + width * 0.2, color="#333", linewidth=1.1)
    axes.set_xticks(range(len(groups)), groups, fontsize=8, rotation=20 if len(groups) > 6 else 0)
    drawn = [v for _, values, _ in series for v in values if v]
    drawn += [high for _, _, whiskers in series for whisker in whiskers or [] if whisker for high in whisker[1:]]
    if drawn and max(drawn) / min(drawn) > 10:  # torch at 50 ms beside ONNX Runtime at 0.5 ms: both stay visible
        axes.set_yscale("log")
        _log_axis(axes.yaxis, plain=True)


def plot_latency(plots: Plots, bench: dict[str, Any]) -> str | None:
    rows = bench.get("rows") or []
    if not rows:
        return None
    engines, shapes, cells = _latency_grid(rows)
    series = []
    for engine in engines:
        values = [cells[(engine, s)]["p50_ms"] if (engine, s) in cells else None for s in shapes]
        whiskers = [(cells[(engine, s)]["p90_ms"], cells[(engine, s)]["p99_ms"]) if (engine, s) in cells else None for s in shapes]
        series.append((engine, values, whiskers))
    figure = plots.figure(8.0, 3.2)
    axes = figure.subplots()
    _grouped_bars(axes, shapes, series)
    axes.set_ylabel("ms (p50; whisker p90-p99)")
    figure.legend(fontsize=8, frameon=False, ncols=min(4, len(engines)), loc="outside upper center")
    _style_axes(axes)
    return plots.svg(figure)


def speedups(bench: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{baseline engine: {shape: baseline p50 / ort:tfopt p50}} for every engine that is not ort:tfopt."""
    engines, shapes, cells = _latency_grid(bench.get("rows") or [])
    found: dict[str, dict[str, float]] = {}
    for engine in engines:
        if engine == "ort:tfopt":
            continue
        for shape in shapes:
            ours, theirs = cells.get(("ort:tfopt", shape)), cells.get((engine, shape))
            if ours and theirs and ours["p50_ms"] > 0:
                found.setdefault(engine, {})[shape] = theirs["p50_ms"] / ours["p50_ms"]
    return found


def plot_speedup(plots: Plots, bench: dict[str, Any]) -> str | None:
    found = speedups(bench)
    if not found:
        return None
    _, shapes, _ = _latency_grid(bench.get("rows") or [])
    series = [(f"vs {engine}", [ratios.get(s) for s in shapes], None) for engine, ratios in found.items()]
    figure = plots.figure(8.0, 2.8)
    axes = figure.subplots()
    _grouped_bars(axes, shapes, series)
    axes.axhline(1.0, color="#555", linewidth=1, linestyle="--")
    axes.set_ylabel("speed-up of ort:tfopt (x)")
    figure.legend(fontsize=8, frameon=False, ncols=min(4, len(series)), loc="outside upper center")
    _style_axes(axes)
    return plots.svg(figure)


def _top_op_types(profiles: list[dict[str, Any]]) -> list[str]:
    total: dict[str, float] = {}
    for profile in profiles:
        for entry in profile.get("op_types", []):
            total[entry["op_type"]] = total.get(entry["op_type"], 0.0) + entry["ms"]
    return sorted(total, key=lambda op: -total[op])[:TOP_OP_TYPES]


def plot_profile(plots: Plots, profile: dict[str, Any]) -> str | None:
    """Per op type, one bar per profiled model (raw, optimized), contrib op types marked in green labels."""
    profiles = profile.get("profiles") or []
    if not profiles:
        return None
    shown = _top_op_types(profiles)
    contrib = {e["op_type"] for p in profiles for e in p.get("op_types", []) if e.get("contrib")}
    labels = shown + ["other"]
    figure = plots.figure(8.0, 0.8 + 0.3 * len(labels) * max(1, len(profiles)) ** 0.5)
    axes = figure.subplots()
    height = 0.8 / len(profiles)
    for index, entry in enumerate(profiles):
        times = {e["op_type"]: e["ms"] for e in entry.get("op_types", [])}
        values = [times.get(op, 0.0) for op in shown] + [sum(ms for op, ms in times.items() if op not in shown)]
        positions = [i - 0.4 + height * (index + 0.5) for i in range(len(labels))]
        axes.barh(positions, values, height=height * 0.92, color=PALETTE[index % len(PALETTE)], label=f"{entry['label']} ({entry['kernel_ms']:.3g} ms)")
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    for tick, label in zip(axes.get_yticklabels(), labels):
        if label in contrib:
            tick.set_color(CONTRIB_COLOR)
            tick.set_fontweight("bold")
    axes.invert_yaxis()
    axes.set_xlabel("ms per run (kernel time)")
    axes.legend(fontsize=8, frameon=False, loc="lower right")
    _style_axes(axes)
    return plots.svg(figure)


def plot_contrib_split(plots: Plots, profile: dict[str, Any]) -> str | None:
    """Kernel time of each profiled model split into contrib (fused) ops and standard ops."""
    profiles = profile.get("profiles") or []
    if not profiles:
        return None
    figure = plots.figure(8.0, 0.7 + 0.45 * len(profiles))
    axes = figure.subplots()
    names = [p["label"] for p in profiles]
    contrib = [p["contrib_ms"] for p in profiles]
    standard = [max(0.0, p["kernel_ms"] - p["contrib_ms"]) for p in profiles]
    axes.barh(names, contrib, color=CONTRIB_COLOR, label="contrib (fused) ops")
    axes.barh(names, standard, left=contrib, color=STANDARD_COLOR, label="standard ONNX ops")
    for position, profile_entry in enumerate(profiles):
        axes.text(profile_entry["kernel_ms"], position, f"  {100 * profile_entry['contrib_share']:.0f}% contrib", va="center", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("ms per run (kernel time)")
    axes.legend(fontsize=8, frameon=False, loc="lower right")
    axes.margins(x=0.18)
    _style_axes(axes)
    return plots.svg(figure)


# ----------------------------------------------------------------------------- comparison plots (several runs)


def plot_compare_latency(plots: Plots, runs: list[RunData]) -> str | None:
    benches = [(run, run.report.get("benchmark") or {}) for run in runs]
    rows = [row for _, bench in benches for row in bench.get("rows") or [] if row["engine"] == "ort:tfopt"]
    if not rows:
        return None
    shapes = list(dict.fromkeys(_shape_label(row) for row in rows))
    series = []
    for run, bench in benches:
        cells = {_shape_label(row): row for row in bench.get("rows") or [] if row["engine"] == "ort:tfopt"}
        series.append((run.name, [cells[s]["p50_ms"] if s in cells else None for s in shapes],
                       [(cells[s]["p90_ms"], cells[s]["p99_ms"]) if s in cells else None for s in shapes]))
    figure = plots.figure(8.0, 3.2)
    axes = figure.subplots()
    _grouped_bars(axes, shapes, series)
    axes.set_ylabel("ort:tfopt ms (p50; whisker p90-p99)")
    figure.legend(fontsize=8, frameon=False, ncols=min(4, len(series)), loc="outside upper center")
    _style_axes(axes)
    return plots.svg(figure)


def plot_compare_speedup(plots: Plots, runs: list[RunData]) -> str | None:
    per_run = [(run, speedups(run.report.get("benchmark") or {}).get("ort:raw", {})) for run in runs]
    shapes = list(dict.fromkeys(shape for _, ratios in per_run for shape in ratios))
    if not shapes:
        return None
    figure = plots.figure(8.0, 2.8)
    axes = figure.subplots()
    _grouped_bars(axes, shapes, [(run.name, [ratios.get(s) for s in shapes], None) for run, ratios in per_run])
    axes.axhline(1.0, color="#555", linewidth=1, linestyle="--")
    axes.set_ylabel("speed-up vs ort:raw (x)")
    figure.legend(fontsize=8, frameon=False, ncols=min(4, len(per_run)), loc="outside upper center")
    _style_axes(axes)
    return plots.svg(figure)


def plot_compare_parity(plots: Plots, runs: list[RunData]) -> str | None:
    entries = [(run, run.report.get("verify")) for run in runs if run.report.get("verify")]
    if not entries:
        return None
    figure = plots.figure(8.0, 0.7 + 0.45 * len(entries))
    axes = figure.subplots()
    names = [run.name for run, _ in entries]
    for position, (run, verify) in enumerate(entries):
        value = _positive(verify["overall"].get("max_abs"))
        color = CONTRIB_COLOR if verify.get("passed") else "#d62728"
        if value is not None:
            axes.barh(position, value, color=color, height=0.6)
        tolerance = _positive(verify.get("tolerance"))
        if tolerance:
            axes.plot([tolerance, tolerance], [position - 0.4, position + 0.4], color="#333", linewidth=1.6)
    axes.set_yticks(range(len(names)), names, fontsize=8.5)
    axes.set_xscale("log")
    _log_axis(axes.xaxis)
    axes.invert_yaxis()
    axes.set_xlabel("max abs difference (bar) and tolerance (tick)")
    _style_axes(axes)
    return plots.svg(figure)


def plot_compare_profile(plots: Plots, runs: list[RunData]) -> str | None:
    """The final model's kernel time of each run, stacked by op type."""
    finals = [(run, _final_profile(run.profile)) for run in runs]
    finals = [(run, profile) for run, profile in finals if profile]
    if not finals:
        return None
    shown = _top_op_types([profile for _, profile in finals])[:9]
    figure = plots.figure(8.0, 0.9 + 0.45 * len(finals))
    axes = figure.subplots()
    names = [run.name for run, _ in finals]
    lefts = [0.0] * len(finals)
    for index, op_type in enumerate(shown + ["other"]):
        values = []
        for _, profile in finals:
            times = {e["op_type"]: e["ms"] for e in profile["op_types"]}
            values.append(times.get(op_type, 0.0) if op_type != "other" else sum(ms for op, ms in times.items() if op not in shown))
        axes.barh(names, values, left=lefts, color=PALETTE[index % len(PALETTE)] if op_type != "other" else "#d0d0d0", label=op_type)
        lefts = [left + value for left, value in zip(lefts, values)]
    axes.invert_yaxis()
    axes.set_xlabel("ms per run, final model (kernel time)")
    figure.legend(fontsize=7.5, frameon=False, ncols=5, loc="outside lower center")
    _style_axes(axes)
    return plots.svg(figure)


def _final_profile(profile: dict[str, Any] | None) -> dict[str, Any] | None:
    profiles = (profile or {}).get("profiles") or []
    for entry in profiles:
        if entry["label"] == "optimized":
            return entry
    return profiles[-1] if profiles else None


# ----------------------------------------------------------------------------- HTML pieces


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[Any]], text_columns: tuple[int, ...] = (), css: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="text">{cell}</td>' if i in text_columns else f"<td>{cell}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    css = f' class="{css}"' if css else ""
    return f"<table{css}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(value: Any, fmt: str = ".3g") -> str:
    if isinstance(value, bool) or value is None:
        return _e("-" if value is None else value)
    if isinstance(value, (int, float)):
        return _e(format(value, fmt))
    return _e(value)


def _status(report: dict[str, Any]) -> str:
    status = report.get("status", "?")
    css = "ok" if status == "passed" else "bad" if status in ("failed", "error") else "warn"
    return f'<span class="{css}">{_e(status.upper())}</span>'


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in sorted(options.items())) or "-"


def _environment_text(report: dict[str, Any]) -> tuple[str, str]:
    env = report.get("environment") or {}
    machine = ", ".join(
        part for part in (env.get("cpu"), f"{env['cpu_count']} cores" if env.get("cpu_count") else "", " ".join(env.get("cpu_flags") or []), env.get("platform")) if part
    )
    packages = env.get("packages") or {}
    versions = ", ".join([f"tfopt {report.get('tfopt_version', '?')}"] + (["python " + env["python"]] if env.get("python") else []) + [f"{k} {v}" for k, v in packages.items()])
    return machine or "not recorded", versions


def what_was_run(runs: list[RunData]) -> str:
    """One column per run: adapter, source, exporter, precision, options, status, machine, versions."""
    rows: list[tuple[str, Callable[[RunData], str]]] = [
        ("status", lambda r: _status(r.report)),
        ("adapter", lambda r: _e(_adapter_text(r.report))),
        ("source", lambda r: _e(r.report.get("source") or "the adapter's default model")),
        ("exporter", lambda r: _e((r.report.get("export") or {}).get("exporter") or "-")),
        ("model type", lambda r: _e(_model_text(r.report))),
        ("precision", lambda r: _e((r.report.get("options") or {}).get("precision", "fp32"))),
        ("options", lambda r: f"<code>{_e(_options_text(r.report.get('options') or {}))}</code>"),
        ("written", lambda r: _e(r.report.get("created_utc", "-"))),
        ("directory", lambda r: f"<code>{_e(r.path)}</code>"),
        ("machine", lambda r: _e(_environment_text(r.report)[0])),
        ("versions", lambda r: _e(_environment_text(r.report)[1])),
    ]
    headers = [""] + [run.name for run in runs]
    body = [[f"<b>{_e(label)}</b>"] + [cell(run) for run in runs] for label, cell in rows]
    return _table(headers, body, text_columns=tuple(range(len(headers))), css="what")


def _adapter_text(report: dict[str, Any]) -> str:
    adapter = (report.get("plugins") or {}).get("adapter") or {}
    name = adapter.get("name") or report.get("family") or "-"
    origin = " ".join(part for part in (adapter.get("distribution"), adapter.get("version")) if part)
    return f"{name} ({origin})" if origin else name


def _model_text(report: dict[str, Any]) -> str:
    info = (report.get("export") or {}).get("info") or {}
    parts = [info.get("model_type", "-")]
    for key, label in (("num_layers", "layers"), ("hidden_size", "hidden"), ("num_heads", "heads")):
        if info.get(key):
            parts.append(f"{info[key]} {label}")
    return ", ".join(parts)


def _fusion_section(plots: Plots, report: dict[str, Any]) -> str:
    fuse = report.get("fuse")
    if not fuse:
        return "<p class='muted'>The fuse stage did not run.</p>"
    from .report import FUSED_OP_TYPES

    parts = []
    expected = fuse.get("expected") or {}
    counts = fuse.get("op_counts") or {}
    if expected:
        rows = []
        for key, want in expected.items():
            have = sum(counts.get(op, 0) for op in key.split("|"))
            rows.append([_e(key.replace("|", " | ")), _num(have), _num(want), '<span class="ok">ok</span>' if have >= want else '<span class="bad">MISSING</span>'])
        parts.append(_table(["fused op", "found", "expected", ""], rows))
        svg = plot_fusion(plots, fuse)
        if svg:
            parts.append(_figure_html("fusion", svg, "Fused nodes found in the optimized model against the count a fully fused model of this family has (red: short)."))
    else:
        shown = [[_e(op), _num(count)] for op, count in counts.items() if op in FUSED_OP_TYPES]
        parts.append(_table(["fused op", "found"], shown) if shown else "<p class='muted'>No fused ops, and the family states no expected counts.</p>")
    if "leftover" in fuse:  # counted in the fused graph, whatever the family claims (tfopt.graph.leftovers)
        left = fuse.get("leftover") or {}
        if left:
            rows = [[_e(kind), _num(count)] for kind, count in left.items()]
            parts.append("<h3 class='bad'>Primitives left unfused</h3>" + _table(["primitive", "count"], rows))
        else:
            parts.append("<p class='ok'>No primitive left unfused (Softmax, norm chains, gelu formulas, rotate-half).</p>")
    fired = [[_e(rule), _num(times)] for rule, times in (fuse.get("rule_counts") or {}).items() if times]
    if fired:
        parts.append("<h3>Rules that fired</h3>" + _table(["rule", "matches"], fired))
    never = [rule for rule, times in (fuse.get("rule_counts") or {}).items() if not times]
    if never:
        parts.append(f"<p class='muted'>{len(never)} rules found nothing to fuse in this graph.</p>")
    for dropped in fuse.get("dropped_rules") or []:
        parts.append(f"<p class='bad'>rule {_e(dropped['rule'])} left out: {_e(dropped['problem'])}</p>")
    for stage in ("fuse", "convert_precision"):
        validation = (report.get(stage) or {}).get("validation")
        if validation:
            parts.append(f"<p>{_e((report.get(stage) or {}).get('model_path'))}: {_validation_text(validation)}</p>")
    notes = (report.get("convert_precision") or {}).get("notes") or []
    if notes:  # how the final precision was reached (quantizer, rounding, what stayed fp32)
        parts.append("<ul class='muted'>" + "".join(f"<li>{_e(note)}</li>" for note in notes) + "</ul>")
    return "".join(parts)


def _validation_text(validation: dict[str, Any]) -> str:
    """The check before the model was written (docs/validation.md), in one line."""
    if not validation.get("passed"):
        return f"<span class='bad'>validation failed</span>: {_e(validation.get('problem') or '')}"
    from .graph.validate import EMULATED, EMULATED_LOADS

    loads = f"its CPU emulation {EMULATED_LOADS} loads" if validation.get("precision") in EMULATED else "loads"
    if not validation.get("feeds"):
        return f"validated: {loads} in ONNX Runtime (parity not checked: " + _e("; ".join(validation.get("notes") or []) or "no feeds") + ")"
    return (f"<span class='ok'>validated</span>: {_e(loads)} in ONNX Runtime and matches its input on {validation['feeds']} generated inputs "
            f"(max difference {_num(validation.get('max_diff'), '.2g')}, {validation.get('precision', 'fp32')})")


def _parity_section(plots: Plots, report: dict[str, Any]) -> str:
    verify = report.get("verify")
    if not verify:
        return "<p class='muted'>Verification did not run.</p>"
    from .report import parity_line

    parts = [f"<p>{'<span class=ok>PASS</span>' if verify.get('passed') else '<span class=bad>FAIL</span>'} {_e(parity_line(verify))}</p>"]
    if verify.get("top1_agreement") is not None:
        parts.append(f"<p>top-1 agreement {_num(verify['top1_agreement'], '.4f')}</p>")
    svg = plot_parity_cases(plots, verify)
    if svg:
        parts.append(_figure_html("parity-cases", svg, "Per input case: max, p99 and p50 abs difference against the reference (log scale); dashed: the tolerance."))
    svg = plot_parity_histogram(plots, verify)
    if svg:
        histogram = verify["histogram"]
        parts.append(_figure_html(
            "parity-histogram", svg,
            f"Abs differences over all {histogram.get('total', 0)} valid output positions (log bins; "
            f"{histogram.get('zeros', 0)} exact, {histogram.get('nonfinite', 0)} NaN/inf not drawn).",
        ))
    else:
        parts.append("<p class='muted'>No histogram of differences in this report (the adapter's verify keeps per-case statistics only).</p>")
    cases = verify.get("cases") or []
    if cases:
        shown = cases[:40]
        rows = [[_e(_case_label(c)), _num(c.get("max_abs")), _num(c.get("p99_abs")), _num(c.get("p50_abs")), _num(c.get("max_rel")), _num(c.get("nan_count"))] for c in shown]
        more = f"<p class='muted'>{len(cases) - len(shown)} more cases in report.json.</p>" if len(cases) > len(shown) else ""
        parts.append("<details><summary>per-case statistics</summary>" + _table(["case", "max abs", "p99 abs", "p50 abs", "max rel", "NaN"], rows) + more + "</details>")
    return "".join(parts)


def _latency_section(plots: Plots, report: dict[str, Any]) -> str:
    bench = report.get("benchmark")
    if not bench or not bench.get("rows"):
        return "<p class='muted'>No benchmark in this run (<code>--no-benchmark</code>).</p>"
    parts = []
    svg = plot_latency(plots, bench)
    if svg:
        parts.append(_figure_html("latency", svg, f"p50 latency per engine and shape on {_e(bench.get('device', 'cpu'))}; whiskers from p90 to p99."))
    svg = plot_speedup(plots, bench)
    if svg:
        parts.append(_figure_html("speedup", svg, "How many times faster ONNX Runtime runs tfopt's model than each other engine (p50 / p50; above the dashed line is faster)."))
    engines, shapes, cells = _latency_grid(bench["rows"])
    rows = [[_e(shape)] + [_num(cells[(e, shape)]["p50_ms"], ".3f") if (e, shape) in cells else "-" for e in engines] for shape in shapes]
    parts.append(_table(["shape"] + [f"{e} p50 ms" for e in engines], rows))
    for note in bench.get("grid_notes") or []:
        parts.append(f"<p class='muted'>{_e(note)}</p>")
    return "".join(parts)


def _profile_section(plots: Plots, profile: dict[str, Any] | None) -> str:
    if not profile or not profile.get("profiles"):
        return "<p class='muted'>Not profiled (<code>tfopt run --profile</code> or <code>tfopt profile RUN_DIR</code> adds it).</p>"
    first = profile["profiles"][0]
    shape = f"batch {profile['batch_size']}, sequence {profile['sequence_length']}" + (
        f", past {profile['past_sequence_length']}" if profile.get("past_sequence_length") else "")
    parts = [f"<p>ONNX Runtime's profiler, {_e(shape)}, {first['samples']} runs after {first['warmup']} warm-up, "
             f"threads {first['threads'] or 'default'}; mean time per run over the quieter half of the runs "
             f"({first.get('runs_used', first['samples'])} used). Inputs: {_e(profile.get('feed', '-'))}.</p>"]
    totals = [[_e(p["label"]), _num(p["kernel_ms"], ".3f"), _num(p["executor_ms"], ".3f"), _num(100 * p["kernel_coverage"], ".1f") + "%",
               _num(100 * p["contrib_share"], ".1f") + "%", _num(p["nodes_per_run"], "g")] for p in profile["profiles"]]
    parts.append(_table(["model", "kernel ms", "executor ms", "in kernels", "in contrib ops", "kernel calls"], totals))
    svg = plot_profile(plots, profile)
    if svg:
        parts.append(_figure_html("profile", svg, "Kernel time per op type (green labels: contrib ops, i.e. fused); the rest summed as other."))
    svg = plot_contrib_split(plots, profile)
    if svg:
        parts.append(_figure_html("profile-contrib", svg, "Kernel time in fused contrib ops against standard ONNX ops."))
    comparison = profile.get("comparison")
    if comparison:
        parts.append(f"<p><b>removed by fusion:</b> {_e(', '.join(comparison['removed']) or 'nothing')}<br>"
                     f"<b>added:</b> {_e(', '.join(comparison['added']) or 'nothing')}<br>"
                     f"<b>standard ops left:</b> {_e(', '.join(comparison['left']) or 'none')}<br>"
                     f"<b>kernel total:</b> {_num(comparison['raw_kernel_ms'], '.3f')} ms raw, {_num(comparison['optimized_kernel_ms'], '.3f')} ms optimized "
                     f"({_num(comparison['speedup'], '.2f')}x)</p>")
    final = _final_profile(profile)
    if final and final.get("top_nodes"):
        rows = [[_e(n["name"]), _e(n["op_type"]), _num(n["ms"], ".4f"), _num(100 * n["share"], ".1f") + "%", _e(n.get("origin", ""))] for n in final["top_nodes"]]
        parts.append(f"<details><summary>top {len(rows)} nodes of {_e(final['label'])}</summary>" + _table(["node", "op type", "ms", "share", "from"], rows, text_columns=(0,)) + "</details>")
    return "".join(parts)


def _warnings_section(report: dict[str, Any]) -> str:
    items = list(report.get("warnings") or [])
    parts = []
    if report.get("error"):
        parts.append(f"<p class='bad'>error: {_e(report['error'])}</p>")
    if items:
        parts.append("<ul class='warnings'>" + "".join(f"<li>{_e(item)}</li>" for item in items) + "</ul>")
    return "".join(parts) or "<p class='muted'>None.</p>"


def _run_section(plots: Plots, run: RunData, index: int, several: bool) -> str:
    report = run.report
    title = f"<h2 id='run-{index}'>{_e(run.name)} {_status(report)}</h2>" if several else ""
    what = "" if several else "<h2>What was run</h2>" + what_was_run([run])
    return (
        f"<section class='run'>{title}{what}"
        f"<h3>Fused-op coverage</h3>{_fusion_section(plots, report)}"
        f"<h3>Parity</h3>{_parity_section(plots, report)}"
        f"<h3>Latency</h3>{_latency_section(plots, report)}"
        f"<h3>Where the time goes</h3>{_profile_section(plots, run.profile)}"
        f"<h3>Warnings</h3>{_warnings_section(report)}</section>"
    )


def _left_unfused(fuse: dict[str, Any]) -> str:
    """The primitives a run left, as one cell ("-" for a report older than the count)."""
    if "leftover" not in fuse:
        return "-"
    left = fuse.get("leftover") or {}
    if not left:
        return '<span class="ok">none</span>'
    return '<span class="bad">' + _e(", ".join(f"{count} {kind}" for kind, count in left.items())) + "</span>"


def _comparison_section(plots: Plots, runs: list[RunData]) -> str:
    parts = ["<h2>Side by side</h2>", what_was_run(runs)]
    coverage = []
    for run in runs:
        fuse = run.report.get("fuse") or {}
        expected, counts = fuse.get("expected") or {}, fuse.get("op_counts") or {}
        have = sum(min(sum(counts.get(op, 0) for op in key.split("|")), want) for key, want in expected.items())
        verify = run.report.get("verify") or {}
        profile = _final_profile(run.profile)
        coverage.append([
            _e(run.name),
            f"{have}/{sum(expected.values())}" if expected else "-",
            _left_unfused(fuse),
            _num((verify.get("overall") or {}).get("max_abs")),
            _num(verify.get("tolerance")),
            _num(profile["kernel_ms"], ".3f") if profile else "-",
            (_num(100 * profile["contrib_share"], ".1f") + "%") if profile else "-",
            _num(len(run.report.get("warnings") or [])),
        ])
    parts.append(_table(["run", "fused/expected", "left unfused", "max abs diff", "tolerance", "kernel ms", "in contrib ops", "warnings"], coverage))
    for kind, draw, caption in (
        ("compare-latency", plot_compare_latency, "ONNX Runtime on each run's final model: p50 per shape, whiskers p90-p99."),
        ("compare-speedup", plot_compare_speedup, "Each run's speed-up over its own raw export (p50 / p50)."),
        ("compare-parity", plot_compare_parity, "Each run's worst abs difference against its reference (green: passed), tick: its tolerance."),
        ("compare-profile", plot_compare_profile, "Kernel time of each run's final model, stacked by op type."),
    ):
        svg = draw(plots, runs)
        if svg:
            parts.append(_figure_html(kind, svg, caption))
    return "".join(parts)


def render_page(runs: list[RunData], *, title: str | None = None) -> str:
    """The whole page for one or more runs (several: a side-by-side section first, then each run)."""
    if not runs:
        raise TfoptError("no run directories to report on")
    _unique_names(runs)
    plots = Plots()
    several = len(runs) > 1
    title = title or ("tfopt: " + (" vs ".join(run.name for run in runs) if several else f"{runs[0].report.get('family', '?')} on {runs[0].report.get('source') or 'its default model'}"))
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = []
    with plots.settings():
        if several:
            body.append("<nav>" + "".join(f"<a href='#run-{i}'>{_e(run.name)}</a>" for i, run in enumerate(runs)) + "</nav>")
            body.append(_comparison_section(plots, runs))
        body += [_run_section(plots, run, index, several) for index, run in enumerate(runs)]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p class='muted'>made by tfopt {_e(__version__)} on {_e(made)} from "
        f"{len(runs)} run director{'ies' if several else 'y'}; self-contained, no network needed.</p></header>"
        f"<main>{''.join(body)}</main></body></html>\n"
    )


def write_page(text: str, output: str | os.PathLike) -> Path:
    """Write the page atomically (temp file + rename), readable by everyone like report.json."""
    output = Path(output)
    if output.exists() and output.is_dir():
        raise TfoptError(f"{output}: is a directory; --output takes an .html file name")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    except OSError as exc:
        raise TfoptError(f"{output}: cannot write the report here ({exc.strerror or exc})") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as tmp:
            tmp.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, output)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return output


def write_report_page(run_dirs: list[str | os.PathLike], output: str | os.PathLike) -> Path:
    """``tfopt report``: read each run directory and write one page."""
    return write_page(render_page([load_run(run_dir) for run_dir in run_dirs]), output)


def page_for_report(report: dict[str, Any], run_dir: str | os.PathLike) -> str:
    """The page of a report dict not read from disk (what `tfopt run` writes beside report.json)."""
    run_dir = Path(run_dir)
    return render_page([RunData(run_dir.resolve().name or str(run_dir), run_dir, report, report.get("profile"))])
