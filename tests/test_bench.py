"""Latency helpers: percentiles from timed calls, and engines timed in alternation."""

from __future__ import annotations

import numpy as np

from tfopt.bench import latency_row, time_calls, time_interleaved


def test_time_calls_runs_warmup_then_repeat_calls():
    calls = []
    seconds = time_calls(lambda: calls.append(1), warmup=2, repeat=5)
    assert len(calls) == 7 and seconds.shape == (5,) and (seconds >= 0).all()


def test_time_interleaved_alternates_engines_block_by_block():
    order = []
    times = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, repeat=5, block=2)
    # warm-up of each, then blocks of 2 calls per engine, the last block cut to what is left
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 2 + ["a", "b"]
    assert set(times) == {"a", "b"} and all(t.shape == (5,) for t in times.values())


def test_latency_row_percentiles_and_throughput():
    row = latency_row("ort", 4, 128, np.array([0.010] * 9 + [0.020]))
    assert row.p50_ms == 10.0 and row.p99_ms > row.p90_ms >= 10.0
    assert row.throughput == 400.0  # 4 samples per 10 ms
