"""``tfopt profile``: where ONNX Runtime spends a model's time, per op type and per node.

ONNX Runtime's own profiler (``SessionOptions.enable_profiling``) writes a Chrome trace:
one ``cat: "Node"`` event per kernel call (name ``<node>_kernel_time``, ``args.op_name``,
``args.provider``) and, per ``session.run``, one ``model_run`` and one
``SequentialExecutor::Execute`` event. This module reads that trace itself: kernel
events are assigned to the run whose time window holds them, the warm-up runs are left
out, and of the profiled runs the quieter half (executor time at or below the median) is
averaged: a run that another process on a shared machine preempted is left out whole,
while means keep the sums exact, so the per-op-type times add up to the kernel total of
those runs, which is set against the executor's own measure of them (``executor_ms``,
``kernel_coverage``): the time between kernels that no kernel event holds.

A run directory is profiled twice with the same feed, the raw export and the final
model, and the two are compared: which op types the fusions removed, what is left, and
how much of the time sits in fused contrib ops (``com.microsoft``: tfopt's fusions and
ONNX Runtime's own load-time ones) versus standard ONNX ops.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import TfoptError, first_line
from .results import PROFILE_FILE  # noqa: F401 (tfopt.profile.PROFILE_FILE stays importable: the CLI takes it from here)

DEFAULT_BATCH_SIZE = 1
DEFAULT_SEQUENCE_LENGTH = 32
DEFAULT_PAST_SEQUENCE_LENGTH = 0
DEFAULT_SAMPLES = 20
DEFAULT_WARMUP = 3
DEFAULT_TOP = 10
# A control-flow node's kernel time contains its subgraph's kernels, which are traced too.
SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})
KERNEL_SUFFIX = "_kernel_time"
CONTRIB_DOMAIN = "com.microsoft"


@dataclass
class OpTypeTime:
    op_type: str
    ms: float  # kernel time per run (mean over the runs used)
    share: float  # of the model's kernel total
    calls: float  # kernel calls per run
    contrib: bool  # a com.microsoft contrib op (fused), not a standard ONNX op


@dataclass
class NodeTime:
    name: str
    op_type: str
    ms: float
    share: float
    contrib: bool
    origin: str  # "model": a node of the ONNX file; "onnxruntime": made by ONNX Runtime's load-time fusions
    input_shapes: list[list[int]] = field(default_factory=list)


@dataclass
class ModelProfile:
    label: str  # "raw", "optimized", or the file's name
    model_path: Path
    provider: str
    threads: int  # intra-op threads; 0 = ONNX Runtime's default
    samples: int  # profiled runs (after the warm-up runs)
    warmup: int
    run_ms: float  # model_run time (session.run inside ONNX Runtime), mean over the runs used
    executor_ms: float  # SequentialExecutor::Execute time: the run's kernels and the executor between them
    kernel_ms: float  # the runs' kernel events summed (per run): the total the op-type times add up to
    runs_used: int  # the quieter half of the profiled runs (executor time at or below the median) that were averaged
    kernel_coverage: float  # kernel_ms / executor_ms: share of the executor's time inside kernels
    contrib_ms: float
    contrib_share: float  # of kernel_ms
    nodes_per_run: float
    op_types: list[OpTypeTime]
    top_nodes: list[NodeTime]
    skipped: list[str] = field(default_factory=list)  # control-flow op types left out (their subgraphs count)


@dataclass
class OpTypeChange:
    op_type: str
    raw_ms: float
    optimized_ms: float
    raw_calls: float
    optimized_calls: float
    contrib: bool


@dataclass
class ProfileComparison:
    rows: list[OpTypeChange]  # every op type of either profile, slowest first
    removed: list[str]  # op types that ran in the raw model and no longer run in the optimized one
    added: list[str]  # op types that run only in the optimized model (the fused ops)
    left: list[str]  # standard (non-contrib) op types still running in the optimized model, slowest first
    raw_kernel_ms: float
    optimized_kernel_ms: float
    speedup: float  # raw kernel total / optimized kernel total


@dataclass
class ProfileResult:
    batch_size: int
    sequence_length: int
    past_sequence_length: int
    inputs: dict[str, list[int]]  # the feed: input name -> shape
    feed: str  # where the feed came from: the adapter's make_dummy_inputs, or the graph's inputs (and why)
    profiles: list[ModelProfile]
    comparison: ProfileComparison | None = None  # raw vs optimized, for a run directory
    seconds: float = 0.0
    # The feed's dynamic axes by name, {"batch": 1, "samples": 800}: what was profiled (sequence_length
    # is 0 when no axis was sized by it). Absent from older profiles.
    shape: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading a trace


def _contrib_kernel_ops() -> frozenset[str]:
    """Op types ONNX Runtime has a com.microsoft kernel for (any provider)."""
    try:
        from onnxruntime.capi import _pybind_state

        return frozenset(d.op_name for d in _pybind_state.get_all_opkernel_def() if d.domain == CONTRIB_DOMAIN)
    except Exception:  # an ONNX Runtime build without the listing: judge by the model file only
        return frozenset()


def model_node_domains(model_path: str | Path) -> dict[str, str]:
    """Node name -> domain ("" for standard ONNX) of the model file's nodes; weights are not read."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return {node.name: ("" if node.domain == "ai.onnx" else node.domain) for node in graph.node if node.name}


def _window_index(starts: list[int], ends: list[int], ts: int) -> int | None:
    """Index of the run whose [start, end] holds ``ts``; None when none does."""
    index = bisect.bisect_right(starts, ts) - 1
    return index if index >= 0 and ts <= ends[index] else None


def summarize_trace(
    events: list[dict[str, Any]],
    *,
    label: str,
    model_path: str | Path,
    node_domains: dict[str, str],
    warmup: int,
    top: int = DEFAULT_TOP,
    threads: int = 0,
    provider: str = "CPUExecutionProvider",
    contrib_ops: Iterable[str] | None = None,
) -> ModelProfile:
    """A :class:`ModelProfile` from ONNX Runtime's trace events; the first ``warmup`` runs are left out.

    ``node_domains`` (from :func:`model_node_domains`) tells the model's own nodes from those
    ONNX Runtime made while loading it, and a node's domain whether it is a contrib op.
    """
    contrib_ops = _contrib_kernel_ops() if contrib_ops is None else frozenset(contrib_ops)
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    if len(runs) <= warmup:
        raise TfoptError(f"{model_path}: the profile holds {len(runs)} runs, fewer than the {warmup} warm-up runs + 1")
    starts = [int(run["ts"]) for run in runs]
    ends = [int(run["ts"]) + int(run.get("dur", 0)) for run in runs]
    samples = len(runs) - warmup

    executor = np.zeros(len(runs))
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "SequentialExecutor::Execute":
            index = _window_index(starts, ends, int(event["ts"]))
            if index is not None:
                executor[index] += float(event.get("dur", 0))

    node_runs: dict[tuple[str, str], np.ndarray] = {}  # µs per run, per node
    node_info: dict[tuple[str, str], tuple[str, list]] = {}
    op_calls: dict[str, int] = defaultdict(int)
    skipped: set[str] = set()
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or "op_name" not in args or not str(event.get("name", "")).endswith(KERNEL_SUFFIX):
            continue
        index = _window_index(starts, ends, int(event["ts"]))
        if index is None or index < warmup:
            continue
        op_type = args["op_name"]
        if op_type in SUBGRAPH_OPS:
            skipped.add(op_type)
            continue
        key = (event["name"][: -len(KERNEL_SUFFIX)], str(args.get("node_index", "")))
        if key not in node_runs:
            node_runs[key] = np.zeros(len(runs))
            shapes = [list(next(iter(item.values()), [])) for item in args.get("input_type_shape", []) if isinstance(item, dict)]
            node_info[key] = (op_type, shapes)
        node_runs[key][index] += float(event.get("dur", 0))
        op_calls[op_type] += 1

    def is_contrib(name: str, op_type: str) -> bool:
        if name in node_domains:
            return node_domains[name] not in ("", "ai.onnx")
        return op_type in contrib_ops

    # The quieter half of the runs, averaged: a run another process preempted is left out
    # whole, and means keep the sums exact (op types add up to the kernels of those runs).
    profiled = np.arange(warmup, len(runs))
    used = profiled[executor[profiled] <= np.median(executor[profiled])] if executor[profiled].any() else profiled
    node_ms = {key: float(per_run[used].mean()) / 1000.0 for key, per_run in node_runs.items()}
    op_ms: dict[str, float] = defaultdict(float)
    op_contrib: dict[str, bool] = defaultdict(bool)
    for key, ms in node_ms.items():
        op_type = node_info[key][0]
        op_ms[op_type] += ms
        op_contrib[op_type] = op_contrib[op_type] or is_contrib(key[0], op_type)
    kernel_ms = sum(node_ms.values())
    share = (lambda ms: ms / kernel_ms) if kernel_ms else (lambda ms: 0.0)
    contrib_ms = sum(ms for key, ms in node_ms.items() if is_contrib(key[0], node_info[key][0]))
    op_types = [
        OpTypeTime(op_type, round(ms, 6), round(share(ms), 6), round(op_calls[op_type] / samples, 3), op_contrib[op_type])
        for op_type, ms in sorted(op_ms.items(), key=lambda item: -item[1])
    ]
    top_nodes = [
        NodeTime(
            name=name or f"({node_info[(name, index)][0]} #{index})",
            op_type=node_info[(name, index)][0],
            ms=round(ms, 6),
            share=round(share(ms), 6),
            contrib=is_contrib(name, node_info[(name, index)][0]),
            origin="model" if name in node_domains else "onnxruntime",
            input_shapes=node_info[(name, index)][1],
        )
        for (name, index), ms in sorted(node_ms.items(), key=lambda item: -item[1])[:top]
    ]
    executor_ms = float(executor[used].mean()) / 1000.0
    return ModelProfile(
        label=label,
        model_path=Path(model_path),
        provider=provider,
        threads=threads,
        samples=samples,
        warmup=warmup,
        run_ms=round(float(np.mean([float(runs[i].get("dur", 0)) for i in used])) / 1000.0, 6),
        executor_ms=round(executor_ms, 6),
        kernel_ms=round(kernel_ms, 6),
        runs_used=len(used),
        kernel_coverage=round(kernel_ms / executor_ms, 6) if executor_ms else 0.0,
        contrib_ms=round(contrib_ms, 6),
        contrib_share=round(share(contrib_ms), 6),
        nodes_per_run=round(sum(op_calls.values()) / samples, 3),
        op_types=op_types,
        top_nodes=top_nodes,
        skipped=sorted(skipped),
    )


# ----------------------------------------------------------------------------- running the profiler


def profile_model(
    model_path: str | Path,
    feed: dict[str, np.ndarray],
    *,
    label: str | None = None,
    samples: int = DEFAULT_SAMPLES,
    warmup: int = DEFAULT_WARMUP,
    threads: int = 0,
    top: int = DEFAULT_TOP,
    provider: str = "CPUExecutionProvider",
    trace_path: str | Path | None = None,
) -> ModelProfile:
    """Run ``model_path`` ``warmup + samples`` times under ONNX Runtime's profiler and summarize it.

    The session is the one users deploy (all graph optimizations on, sequential
    execution); ``threads`` 0 leaves the intra-op thread count to ONNX Runtime.
    ``trace_path`` keeps ONNX Runtime's raw trace (chrome://tracing, Perfetto).
    """
    import onnxruntime as ort

    from .feeds import session_feed

    model_path = Path(model_path)
    if samples < 1 or warmup < 0:
        raise TfoptError(f"samples must be >= 1 and warm-up runs >= 0 (got {samples}, {warmup})")
    with tempfile.TemporaryDirectory(prefix="tfopt-profile-") as scratch:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort")
        try:
            session = ort.InferenceSession(str(model_path), options, providers=[provider])
        except Exception as exc:
            raise TfoptError(f"{model_path}: ONNX Runtime cannot load it ({first_line(exc)})") from None
        prepared = session_feed(session, feed)
        try:
            for _ in range(warmup + samples):
                session.run(None, prepared)
        except Exception as exc:
            raise TfoptError(f"{model_path}: ONNX Runtime failed to run it on the profile feed ({first_line(exc)})") from None
        finally:
            trace_file = Path(session.end_profiling())
        events = json.loads(trace_file.read_text(encoding="utf-8"))
        if trace_path is not None:
            Path(trace_path).parent.mkdir(parents=True, exist_ok=True)
            trace_file.replace(trace_path)
    if isinstance(events, dict):  # newer traces may wrap the list
        events = events.get("traceEvents", [])
    return summarize_trace(
        events,
        label=label or model_path.name,
        model_path=model_path,
        node_domains=model_node_domains(model_path),
        warmup=warmup,
        top=top,
        threads=threads,
        provider=provider,
    )


def compare_profiles(raw: ModelProfile, optimized: ModelProfile) -> ProfileComparison:
    """Raw vs optimized per op type: what the fusions removed, what they added, what is left."""
    raw_types = {entry.op_type: entry for entry in raw.op_types}
    optimized_types = {entry.op_type: entry for entry in optimized.op_types}
    zero = OpTypeTime("", 0.0, 0.0, 0.0, False)
    rows = [
        OpTypeChange(
            op_type,
            raw_types.get(op_type, zero).ms,
            optimized_types.get(op_type, zero).ms,
            raw_types.get(op_type, zero).calls,
            optimized_types.get(op_type, zero).calls,
            (optimized_types.get(op_type) or raw_types[op_type]).contrib,
        )
        for op_type in {*raw_types, *optimized_types}
    ]
    rows.sort(key=lambda row: (-max(row.raw_ms, row.optimized_ms), row.op_type))
    return ProfileComparison(
        rows=rows,
        removed=sorted(set(raw_types) - set(optimized_types), key=lambda op: -raw_types[op].ms),
        added=sorted(set(optimized_types) - set(raw_types), key=lambda op: -optimized_types[op].ms),
        left=[entry.op_type for entry in optimized.op_types if not entry.contrib],
        raw_kernel_ms=raw.kernel_ms,
        optimized_kernel_ms=optimized.kernel_ms,
        speedup=round(raw.kernel_ms / optimized.kernel_ms, 4) if optimized.kernel_ms else 0.0,
    )


# ----------------------------------------------------------------------------- feeds


def file_feed(
    model_path: str | Path, batch_size: int, sequence_length: int, past_sequence_length: int, *, seed: int = 0,
    axis_sizes: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """A feed read off a bare ONNX file's inputs, as ONNX Runtime's profiler builds one.

    Axis 0 is the batch. ``past_*`` inputs (GPT-2 style ``(batch, heads, past, head_size)``)
    get ``past_sequence_length`` on their other dynamic axes, and when such inputs exist a
    2-D ``attention_mask`` covers past + new tokens and ``position_ids`` continue after the
    past; axes named in ``axis_sizes`` get that size; every other dynamic axis is the
    sequence. Full-length rows, no padding.
    """
    from .feeds import feed_for, graph_inputs

    model_path = Path(model_path)
    specs = graph_inputs(model_path)
    past_specs = [spec for spec in specs if spec.name.startswith("past")]  # past 0: empty tensors (the first step)
    rng = np.random.default_rng(seed)
    feed = feed_for([spec for spec in specs if spec not in past_specs], batch_size, sequence_length, rng=rng, padded=False, dim_sizes=axis_sizes)
    if past_specs:
        total = past_sequence_length + sequence_length
        for name, value in list(feed.items()):
            if "mask" in name and value.ndim == 2:
                feed[name] = np.ones((batch_size, total), dtype=value.dtype)
            elif name == "position_ids":
                feed[name] = np.broadcast_to(np.arange(past_sequence_length, total), value.shape).astype(value.dtype).copy()
        for spec in past_specs:
            shape = [dim if dim is not None else (batch_size if axis == 0 else past_sequence_length) for axis, dim in enumerate(spec.dims)]
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feed


def adapter_feed(
    pm, adapter: str | None, ctx, exported, batch_size: int, sequence_length: int | None, past_sequence_length: int,
    axis_sizes: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """One feed of the given shape from the adapter's ``make_dummy_inputs`` (the generic one when ``adapter`` is None).

    The hook is called on a copy of ``ctx`` whose options ask for that one shape, so the
    run's own verification inputs are left as they are. ``sequence_length`` None: the
    model has no axis for it (every one is sized by name in ``axis_sizes``).
    """
    from .stages import StageRunner  # not from the pipeline, which imports this module

    options = dict(ctx.options)
    options.update(batch_sizes=[batch_size], past_lengths=[past_sequence_length])
    options.pop("sequence_lengths", None)
    if sequence_length is not None:
        options["sequence_lengths"] = [sequence_length]
    if axis_sizes:
        options["axis_sizes"] = {name: [size] for name, size in axis_sizes.items()}
    shape_ctx = dataclasses.replace(ctx, options=options, results={}, progress=lambda message: None)
    feeds = StageRunner(pm, adapter, shape_ctx)("make_dummy_inputs", exported=exported)
    return feeds[0]


# ----------------------------------------------------------------------------- the command's work


def profile_files(
    models: dict[str, Path],
    feed: dict[str, np.ndarray],
    *,
    batch_size: int,
    sequence_length: int,
    past_sequence_length: int,
    samples: int = DEFAULT_SAMPLES,
    warmup: int = DEFAULT_WARMUP,
    threads: int = 0,
    top: int = DEFAULT_TOP,
    trace_dir: Path | None = None,
    progress=lambda message: None,
    feed_origin: str = "generated from the graph's inputs",
) -> ProfileResult:
    """Profile each labelled model on the same feed; ``raw`` + ``optimized`` labels get a comparison."""
    start = time.perf_counter()
    profiles = []
    for label, path in models.items():
        progress(f"profiling {label} ({Path(path).name}): {warmup} warm-up + {samples} runs ...")
        trace = None if trace_dir is None else Path(trace_dir) / f"profile.{label}.trace.json"
        profiles.append(
            profile_model(path, feed, label=label, samples=samples, warmup=warmup, threads=threads, top=top, trace_path=trace)
        )
    by_label = {profile.label: profile for profile in profiles}
    comparison = compare_profiles(by_label["raw"], by_label["optimized"]) if {"raw", "optimized"} <= set(by_label) else None
    return ProfileResult(
        batch_size=batch_size,
        sequence_length=sequence_length,
        past_sequence_length=past_sequence_length,
        inputs={name: list(value.shape) for name, value in feed.items()},
        feed=feed_origin,
        profiles=profiles,
        comparison=comparison,
        seconds=round(time.perf_counter() - start, 3),
        shape=_feed_shape(next(iter(models.values())), feed) if models else {},
    )


def profile_run(pm, adapter: str | None, ctx, exported, final_model: Path) -> ProfileResult:
    """Profile a run's raw export and final model with the adapter's dummy inputs.

    Settings come from ``ctx.options``: ``profile_batch_size``, ``profile_sequence_length``,
    ``profile_past_sequence_length``, ``profile_samples``, ``profile_warmup``,
    ``profile_threads``, ``profile_top``, ``profile_trace_dir`` (keep ONNX Runtime's traces there).
    """
    batch_size = int(ctx.option("profile_batch_size", DEFAULT_BATCH_SIZE))
    sequence_length = int(ctx.option("profile_sequence_length", DEFAULT_SEQUENCE_LENGTH))
    past = int(ctx.option("profile_past_sequence_length", DEFAULT_PAST_SEQUENCE_LENGTH))
    if batch_size < 1 or sequence_length < 1 or past < 0:
        raise TfoptError(f"profile shape must be batch >= 1, sequence >= 1, past >= 0 (got {batch_size}, {sequence_length}, {past})")
    named, length = _profile_axes(ctx, exported)
    if length is None:
        sequence_length = 0
    try:
        feed = adapter_feed(pm, adapter, ctx, exported, batch_size, length, past, named)
        origin = f"{adapter or 'default'}'s make_dummy_inputs"
    except TfoptError as exc:  # e.g. a moved run dir whose source model is gone: the graph still says what it takes
        ctx.progress(f"the adapter cannot make the profile's inputs ({exc}); generating them from the graph's inputs")
        feed = file_feed(exported.model_path, batch_size, sequence_length, past, axis_sizes=named)
        origin = f"generated from the graph's inputs ({adapter or 'default'}'s make_dummy_inputs failed: {exc})"
    shape = _feed_shape(exported.model_path, feed)
    ctx.progress(f"profiling at {_shape_text(shape, past)} ({origin})")
    return profile_files(
        {"raw": Path(exported.model_path), "optimized": Path(final_model)},
        feed,
        batch_size=batch_size,
        sequence_length=sequence_length,
        past_sequence_length=past,
        samples=int(ctx.option("profile_samples", DEFAULT_SAMPLES)),
        warmup=int(ctx.option("profile_warmup", DEFAULT_WARMUP)),
        threads=int(ctx.option("profile_threads", 0)),
        top=int(ctx.option("profile_top", DEFAULT_TOP)),
        trace_dir=Path(ctx.option("profile_trace_dir")) if ctx.option("profile_trace_dir") else None,
        progress=ctx.progress,
        feed_origin=origin,
    )


def _profile_axes(ctx, exported) -> tuple[dict[str, int], int | None]:
    """(size per named axis, the sequence length or None when no axis is left for it).

    Named axes take the largest of the run's sizes (``ModelInfo.axis_sizes``, ``--option
    axis_sizes``); the sequence length sizes the other dynamic axes, and an explicit
    ``--sequence-length`` for a model with none left is a one-line error.
    """
    from .default_plugin import run_axis_sizes
    from .feeds import check_sequence_option, graph_inputs, shape_axes

    sizes = run_axis_sizes(ctx, exported) or {}
    specs = graph_inputs(exported.model_path)
    axes = shape_axes(specs)
    named = {name: max(values) for name, values in sizes.items() if name in axes}
    if axes and not set(axes) - set(named):
        check_sequence_option(specs, ctx.options.get("profile_sequence_length"), "--sequence-length", sized=named)
        return named, None
    return named, int(ctx.option("profile_sequence_length", DEFAULT_SEQUENCE_LENGTH))


def _feed_shape(model_path: Path, feed: dict[str, np.ndarray]) -> dict[str, int]:
    from .feeds import feed_shape, graph_inputs

    return feed_shape(graph_inputs(model_path), feed)


def _shape_text(shape: dict[str, int], past: int = 0) -> str:
    text = ", ".join(f"{axis} {size}" for axis, size in shape.items())
    return text + (f", past {past}" if past and not any("past" in axis for axis in shape) else "")


# ----------------------------------------------------------------------------- text


def _percent(value: float) -> str:
    return f"{100.0 * value:.1f}%"


def _ms(value: float) -> str:
    return "-" if value == 0 else f"{value:.3f}" if value >= 0.01 else f"{value:.4f}"


def profile_lines(result: dict[str, Any], top: int = DEFAULT_TOP) -> list[str]:
    """The table `tfopt profile` prints, from a ProfileResult as JSON (``report.json``'s ``profile``)."""
    from .report import _table

    profiles = result.get("profiles") or []
    if not profiles:
        return []
    first = profiles[0]
    if result.get("shape"):  # the feed's own axes (an audio model: batch, samples)
        shape = _shape_text(result["shape"], result.get("past_sequence_length") or 0)
    else:
        shape = f"batch {result['batch_size']}, sequence {result['sequence_length']}"
        if result.get("past_sequence_length"):
            shape += f", past {result['past_sequence_length']}"
    threads = first["threads"] or "default"
    lines = [
        f"profile: ONNX Runtime {first['provider'].replace('ExecutionProvider', '')}, {shape}, "
        f"{first['samples']} runs after {first['warmup']} warm-up, threads {threads}; kernel time per run in ms"
    ]
    if result.get("feed"):
        lines.append(f"inputs: {result['feed']}: " + ", ".join(f"{name} {shape}" for name, shape in (result.get("inputs") or {}).items()))
    totals = [
        [p["label"], _ms(p["kernel_ms"]), _ms(p["executor_ms"]), _percent(p["kernel_coverage"]), _percent(p["contrib_share"]), f"{p['nodes_per_run']:g}"]
        for p in profiles
    ]
    lines += _table(["model", "kernels", "executor", "in kernels", "in contrib ops", "kernel calls"], totals)
    comparison = result.get("comparison")
    if comparison:
        rows = [
            [row["op_type"] + (" *" if row["contrib"] else ""), _ms(row["raw_ms"]), f"{row['raw_calls']:g}", _ms(row["optimized_ms"]), f"{row['optimized_calls']:g}"]
            for row in comparison["rows"]
        ]
        lines.append(f"per op type, raw vs optimized (kernel total {comparison['speedup']:.2f}x faster; * = contrib op):")
        lines += _table(["op type", "raw ms", "calls", "optimized ms", "calls"], rows)
        lines.append("removed by fusion: " + (", ".join(comparison["removed"]) or "nothing"))
        lines.append("added: " + (", ".join(comparison["added"]) or "nothing"))
        lines.append("standard ops left: " + (", ".join(comparison["left"]) or "none"))
    else:
        for profile in profiles:
            rows = [[e["op_type"] + (" *" if e["contrib"] else ""), _ms(e["ms"]), _percent(e["share"]), f"{e['calls']:g}"] for e in profile["op_types"]]
            lines.append(f"{profile['label']} per op type (* = contrib op):")
            lines += _table(["op type", "ms", "share", "calls"], rows)
    for profile in profiles:
        if profile["label"] == "raw" and comparison:
            continue
        nodes = [[n["name"][:60], n["op_type"], _ms(n["ms"]), _percent(n["share"])] for n in profile["top_nodes"][:top]]
        lines.append(f"top {len(nodes)} nodes of {profile['label']}:")
        lines += _table(["node", "op type", "ms", "share"], nodes)
    return lines
