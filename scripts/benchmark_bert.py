"""BERT-base-shaped benchmark: tfopt against its peers, all measured in this one run.

Prints (and with --markdown writes) for a random-weight bert-base model exported by
torch's default exporter:
  - the machine's fp32 sgemm rate and DRAM bandwidth, measured in this run
    (scripts/_machine_limits.py), and its ISA;
  - latency of PyTorch eager, ORT on the raw export (twice: the second session is the
    A/A control, its spread is the noise), ORT on ONNX Runtime's own
    ``onnxruntime.transformers`` optimizer output, ORT on onnxscript's
    ``optimize_for_ort`` output, ORT on tfopt's output (MultiHeadAttention, the CPU
    target; and packed Attention, the CUDA target's op, also run on the CPU), and the
    int8 (dynamic quantization) of tfopt's and of ORT's optimizer output; engines
    interleaved round by round, each ratio to ORT raw taken within a round, with its
    spread over rounds, and each engine's GFLOP/s as a fraction of the measured sgemm
    rate (int8 can pass 100%: its roof is the integer rate);
  - each optimizer's wall time and peak memory beyond the process before loading
    the model (each runs in a fresh subprocess, so its peak is its own);
  - the fused-op counts each optimizer reached.

Usage: python scripts/benchmark_bert.py [--layers 12 --hidden 768 --heads 12]
       [--seq 128,512] [--batch 1] [--rounds 7] [--per-round 5] [--markdown docs/benchmark-bert.md]
Needs the bert_pt adapter and sympy (ONNX Runtime's optimizer imports it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

import _machine_limits as limits

# One optimizer per subprocess: (label, python code that reads SRC/DST/HEADS/HIDDEN from env).
_OPTIMIZERS = {
    "tfopt": """
        result = fuse_file(SRC, DST, ModelInfo("bert", HEADS, HIDDEN))
        counts = result.op_counts
    """,
    "ort-transformers": """
        model = optimize_model(SRC, model_type="bert", num_heads=HEADS, hidden_size=HIDDEN)
        model.save_model_to_file(DST, use_external_data_format=True)
        counts = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    """,
    "onnxscript": """
        model = ir.load(SRC)
        model, _ = ort_fusions.optimize_for_ort(model)
        ir.save(model, DST, external_data=os.path.basename(DST) + ".data")
        counts = dict(collections.Counter(n.op_type for n in model.graph))
    """,
}

# Imports each optimizer needs, done before the clock and the memory baseline start.
_IMPORTS = {
    "tfopt": "from tfopt.graph import fuse_file; from tfopt.results import ModelInfo",
    "ort-transformers": "from onnxruntime.transformers.optimizer import optimize_model",
    "onnxscript": "import collections, onnx_ir as ir; from onnxscript.rewriter import ort_fusions",
}

_HARNESS = """
import os, sys, time, json, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
import psutil
SRC, DST = os.environ["SRC"], os.environ["DST"]
HEADS, HIDDEN = int(os.environ["HEADS"]), int(os.environ["HIDDEN"])
{imports}  # imports are not the optimizer's cost
def high_water_mark():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as refs:  # reset the peak so imports do not count
    refs.write("5")
baseline = psutil.Process().memory_info().rss
start = time.perf_counter()
{body}
seconds = time.perf_counter() - start
peak = high_water_mark()
fused = {{k: v for k, v in counts.items() if k in ("Attention", "MultiHeadAttention", "EmbedLayerNormalization",
         "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "LayerNormalization", "Softmax")}}
print("RESULT" + json.dumps({{"seconds": seconds, "peak_mb": (peak - baseline) / 1e6, "fused": fused}}))
"""


def run_optimizer(name: str, src: Path, dst: Path, heads: int, hidden: int) -> dict:
    code = _HARNESS.format(imports=_IMPORTS[name], body=textwrap.dedent(_OPTIMIZERS[name]))
    env = dict(os.environ, SRC=str(src), DST=str(dst), HEADS=str(heads), HIDDEN=str(hidden))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": tail[0][:200]}


def build_and_export(work: Path, layers: int, hidden: int, heads: int, exporter: str, attn: str) -> tuple[Path, object]:
    """A random-weight BERT of the given shape, exported through the bert_pt adapter."""
    from tfopt.results import RunContext
    from tfopt_bert_pt.export import export_model
    from tfopt_bert_pt.models import random_bert

    model = random_bert(num_layers=layers, hidden_size=hidden, num_heads=heads, attn_implementation=attn)
    ctx = RunContext(family="bert_pt", source=None, work_dir=work, options={"exporter": exporter})
    exported = export_model(ctx, model)
    return exported.model_path, model


def feeds_for(session, batch: int, seq: int) -> dict:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.get_inputs():
        dtype = np.int32 if spec.type == "tensor(int32)" else np.int64
        if "mask" in spec.name:
            feeds[spec.name] = np.ones((batch, seq), dtype)
        elif "type" in spec.name:
            feeds[spec.name] = np.zeros((batch, seq), dtype)
        else:
            feeds[spec.name] = rng.integers(1000, 20000, (batch, seq)).astype(dtype)
    return feeds


def model_flops(layers: int, hidden: int, batch: int, seq: int) -> float:
    """MatMul FLOPs of one BERT forward: QKV/output/FFN projections (24 h^2 per token per layer) + scores and context."""
    tokens = batch * seq
    return layers * (24.0 * tokens * hidden * hidden + 4.0 * batch * seq * seq * hidden)


def variants(work: Path, raw: Path, optimized: dict, args) -> dict:
    """tfopt with packed Attention (the CUDA target's op) and the int8 versions of tfopt's and ORT's outputs."""
    from tfopt.graph import fuse_file
    from tfopt.precision import to_int8
    from tfopt.results import ModelInfo

    extra = {}
    try:
        print("fusing with tfopt for packed Attention (--target cuda) ...", flush=True)
        packed = fuse_file(raw, work / "tfopt-attention.onnx", ModelInfo("bert", args.heads, args.hidden), target="cuda")
        extra["ort:tfopt (packed Attention)"] = packed.model_path
    except Exception as exc:  # reported, not fatal: the other engines still compare
        print(f"packed Attention variant failed: {exc}", flush=True)
    if "tfopt" in optimized:
        print("quantizing tfopt's output to int8 ...", flush=True)
        extra["ort:tfopt int8"] = to_int8(optimized["tfopt"], work / "tfopt.int8.onnx").model_path
    if "ort-transformers" in optimized:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        print("quantizing ORT's optimizer output to int8 (its own quantize_dynamic) ...", flush=True)
        target = work / "ort-transformers.int8.onnx"
        try:
            quantize_dynamic(optimized["ort-transformers"], target, weight_type=QuantType.QInt8, use_external_data_format=True)
            extra["ort:ort-transformers int8"] = target
        except Exception as exc:
            print(f"ORT's int8 failed: {exc}", flush=True)
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seq", default="128,512")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"])
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from tfopt.bench import ort_session

    print("measuring the machine's sgemm rate and DRAM bandwidth ...", flush=True)
    machine = limits.measure()
    work = Path(tempfile.mkdtemp(prefix="tfopt-bench-"))
    print(f"exporting a random bert ({args.layers}x{args.hidden}, {args.heads} heads) with {args.exporter}/{args.attn} ...", flush=True)
    raw, torch_model = build_and_export(work, args.layers, args.hidden, args.heads, args.exporter, args.attn)

    optimized, build = {}, {}
    for name in _OPTIMIZERS:
        print(f"optimizing with {name} ...", flush=True)
        dst = work / f"{name}.onnx"
        build[name] = run_optimizer(name, raw, dst, args.heads, args.hidden)
        if "error" not in build[name]:
            optimized[name] = dst

    engines = {"ort:raw": raw, "ort:raw (A/A)": raw, **{f"ort:{name}": path for name, path in optimized.items()}}
    engines.update(variants(work, raw, optimized, args))
    sessions = {label: ort_session(path) for label, path in engines.items()}
    torch.set_num_threads(os.cpu_count() or 1)
    lines = [
        f"# BERT benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {args.layers} layers, hidden {args.hidden}, "
        f"{args.exporter}/{args.attn} export, random weights, CPU x{os.cpu_count()}, onnxruntime {ort.__version__}, "
        f"torch {torch.__version__})",
        "",
        machine.line(),
        "",
        f"{args.rounds} rounds x {args.per_round} calls per engine, engines interleaved in each round; ratio = median over "
        "rounds of the within-round ratio to ORT raw [lowest, highest]; GFLOP/s = the model's matmul FLOPs / latency.",
        "",
        "| engine | batch | seq | ms | vs ORT raw [spread] | GFLOP/s | of sgemm |",
        "|---|---|---|---|---|---|---|",
    ]
    for seq in (int(s) for s in args.seq.split(",")):
        print(f"timing batch {args.batch}, sequence {seq} (engines interleaved) ...", flush=True)
        feeds = feeds_for(sessions["ort:raw"], args.batch, seq)
        tensors = {k: torch.from_numpy(v.astype(np.int64)) for k, v in feeds.items()}
        calls = {"torch": lambda: torch_model(**tensors)}
        for label, session in sessions.items():
            session_feeds = {i.name: feeds[i.name].astype(np.int32 if i.type == "tensor(int32)" else np.int64) for i in session.get_inputs()}
            calls[label] = lambda session=session, session_feeds=session_feeds: session.run(None, session_feeds)
        with torch.inference_mode():
            summary = limits.ratios(limits.rounds(calls, rounds=args.rounds, per_round=args.per_round), "ort:raw")
        flops = model_flops(args.layers, args.hidden, args.batch, seq)
        for label, row in summary.items():
            rate = flops / (row.median_ms / 1e3) / 1e9
            lines.append(
                f"| {label} | {args.batch} | {seq} | {row.median_ms:.2f} | {row.ratio:.3f}x [{row.low:.3f}, {row.high:.3f}] | "
                f"{rate:.0f} | {rate / machine.sgemm_gflops:.0%} |"
            )
    lines += ["", "| optimizer | optimize time s | peak memory MB | fused ops |", "|---|---|---|---|"]
    for name, result in build.items():
        if "error" in result:
            lines.append(f"| {name} | failed | | {result['error']} |")
        else:
            fused = ", ".join(f"{k} {v}" for k, v in sorted(result["fused"].items()))
            lines.append(f"| {name} | {result['seconds']:.2f} | {result['peak_mb']:.0f} | {fused} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
