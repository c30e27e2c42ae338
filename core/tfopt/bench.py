"""Latency measurement shared by every family: percentiles from repeated timed calls."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import TfoptError, first_line
from .results import LatencyRow


def time_calls(fn: Callable[[], object], *, warmup: int = 3, repeat: int = 20) -> np.ndarray:
    """Wall-clock seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return times


def time_interleaved(
    calls: dict[str, Callable[[], object]], *, warmup: int = 3, repeat: int = 20, block: int = 5
) -> dict[str, np.ndarray]:
    """Seconds per call for several engines, timed in alternating blocks of ``block`` calls.

    On a shared 2-core machine, timing all of engine A's calls and then all of B's lets
    any slow spell land on one engine only; alternating spreads it over all of them.
    Blocks rather than single calls: an ONNX Runtime session's threads spin for a moment
    after each run, which would slow whichever engine runs next; within a block only the
    first call pays that, and the median does not see it.
    """
    times: dict[str, list[float]] = {label: [] for label in calls}
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    while any(len(t) < repeat for t in times.values()):
        for label, fn in calls.items():
            for _ in range(min(block, repeat - len(times[label]))):
                start = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - start)
    return {label: np.array(t) for label, t in times.items()}


def latency_row(
    engine: str, batch_size: int, sequence_length: int, seconds: np.ndarray, *, shape: dict[str, int] | None = None
) -> LatencyRow:
    """Percentiles of ``seconds`` (one per call) as a row keyed by the input shape.

    ``shape``: the timed input's axes by name; default ``{"batch": batch_size, "sequence":
    sequence_length}`` (just ``{"batch": ...}`` when ``sequence_length`` is 0: no sequence axis).
    """
    ms = np.asarray(seconds) * 1000.0
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    if shape is None:
        shape = {"batch": batch_size, "sequence": sequence_length} if sequence_length else {"batch": batch_size}
    return LatencyRow(
        engine=engine,
        batch_size=batch_size,
        sequence_length=sequence_length,
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        throughput=batch_size / (p50 / 1000.0) if p50 > 0 else float("inf"),
        shape={str(name): int(size) for name, size in shape.items()},
    )


def ort_session(model_path: str | Path, *, threads: int = 0, providers: list[str] | None = None):
    """An ONNX Runtime session with all graph optimizations on (what users deploy).

    A model ONNX Runtime refuses (truncated, wrong types, unknown op) is user input,
    not a bug: it becomes a one-line :class:`TfoptError`.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model_path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        raise TfoptError(f"{model_path}: ONNX Runtime cannot load it ({first_line(exc)})") from None
