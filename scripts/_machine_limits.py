"""The machine's limits and the noise, measured in the same run as a benchmark (used by benchmark_*.py).

- ``sgemm_gflops``: ONNX Runtime's own fp32 MatMul (MLAS, all cores, packed weight) on a
  512x1024 @ 1024x1024 product: the compute roof an fp32 model's linears can reach.
- ``bandwidth_gbs``: ONNX Runtime's ReduceSum over a 1 GiB fp32 input, all cores: the
  rate weights can stream from DRAM (the decode step's roof); ``measure_numpy_bandwidth``
  is numpy's sum over threads, often faster here (the decode benchmarks take the best of both). This CPU's L3 is reported
  too: a model smaller than it can beat the DRAM figure once it stays cached.
- ``rounds``: engines timed interleaved, one median per round, so the ratio to a base
  engine is taken within each round (both saw the same load) and its spread is shown.
  An A/A engine (a second session of the base model) gives the noise floor.

All figures are taken while other work may share the machine; callers say so.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class MachineLimits:
    sgemm_gflops: float
    bandwidth_gbs: float
    isa: str
    l3: str
    cores: int
    load_average: float = 0.0  # 1-minute load at the start: above ~0.5 per core, other work shared the run

    def line(self) -> str:
        return (
            f"machine (measured in this run): fp32 sgemm {self.sgemm_gflops:.0f} GFLOP/s, DRAM read "
            f"{self.bandwidth_gbs:.1f} GB/s, {self.cores} cores, ISA {self.isa}, L3 {self.l3}, "
            f"load average {self.load_average:.2f} at the start"
        )


def cpu_isa() -> str:
    """The instruction-set extensions that matter to ONNX Runtime's kernels, from /proc/cpuinfo."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown"
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    names = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile"]
    return " ".join(name for name in names if name in flags) or "none of " + ", ".join(names)


def l3_size() -> str:
    try:
        return open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip()
    except OSError:
        return "unknown"


def _session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _best(fn: Callable[[], object], seconds: float) -> float:
    """Fastest call within ``seconds`` (after one warm-up): the machine's capability, not its load."""
    fn()
    best, stop = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_sgemm(threads: int = 0, m: int = 512, k: int = 1024, n: int = 1024, seconds: float = 2.0) -> float:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "sgemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight],
    )
    session = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), threads)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    return 2.0 * m * k * n / _best(lambda: session.run(None, {"x": x}), seconds) / 1e9


def measure_bandwidth(threads: int = 0, gib: float = 1.0, seconds: float = 2.0) -> float:
    from onnx import TensorProto, helper

    count = int(gib * 2**30 / 4)
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "stream",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [count])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    session = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), threads)
    x = np.ones(count, dtype=np.float32)
    try:
        return count * 4 / _best(lambda: session.run(None, {"x": x}), seconds) / 1e9
    finally:
        del x


def measure_numpy_bandwidth(gib: float = 1.5, tries: int = 6, threads: int = 1) -> float:
    """Best read rate of ``x.sum()`` over a ``gib`` GiB array, split over ``threads`` threads (numpy drops the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    x = np.ones(int(gib * 2**30 / 4), dtype=np.float32)
    parts = np.array_split(x, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(tries + 1):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - start)
    nbytes = x.nbytes
    del x, parts
    return nbytes / best / 1e9


def measure(threads: int = 0) -> MachineLimits:
    return MachineLimits(
        sgemm_gflops=measure_sgemm(threads),
        bandwidth_gbs=measure_bandwidth(threads),
        isa=cpu_isa(),
        l3=l3_size(),
        cores=os.cpu_count() or 1,
        load_average=os.getloadavg()[0],
    )


def rounds(calls: dict[str, Callable[[], object]], *, rounds: int, per_round: int, warmup: int = 2) -> dict[str, list[float]]:
    """Median seconds per round for each engine; engines take turns within every round."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    medians: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(rounds):
        for label, fn in calls.items():
            times = []
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            medians[label].append(statistics.median(times))
    return medians


@dataclass
class RatioSummary:
    median_ms: float
    ratio: float  # median over rounds of (engine / base) within the round
    low: float  # min and max of the per-round ratios
    high: float


def ratios(per_round: dict[str, list[float]], base: str) -> dict[str, RatioSummary]:
    summary = {}
    for label, medians in per_round.items():
        each = [value / reference for value, reference in zip(medians, per_round[base])]
        summary[label] = RatioSummary(statistics.median(medians) * 1e3, statistics.median(each), min(each), max(each))
    return summary


def streamed_weight_bytes(model_path) -> int:
    """Bytes of the initializers a step reads in full: all but tables read by Gather (embeddings: a row per token)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    gathered = {name for name, ops in readers.items() if ops <= {"Gather", "GatherBlockQuantized"}}
    total = 0
    for tensor in model.graph.initializer:
        if tensor.name in gathered:
            continue
        size = 1
        for dim in tensor.dims:
            size *= dim
        bits = {onnx.TensorProto.FLOAT: 32, onnx.TensorProto.FLOAT16: 16, onnx.TensorProto.INT8: 8,
                onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT64: 64, onnx.TensorProto.INT32: 32,
                onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(tensor.data_type, 32)
        total += size * bits // 8
    return total
