"""Longformer on the CPU: HF eager vs HF with tfopt's C++ attention extension vs ONNX Runtime on the cpu-target model.

longformer-base shape (12 layers, hidden 768, 12 heads, attention_window 512 = one-sided 256, random weights),
batch 1, full-length rows with a global CLS token. Prints, in one run:

1. self-attention alone (one layer, HF's LongformerSelfAttention vs the extension's two CPU forms), interleaved;
2. the whole model end to end, interleaved: latency per engine and ratios;
3. peak RSS of one forward call per engine and length, each in a fresh child process
   (VmHWM reset after loading; the figure is the peak during the call, and its growth over the loaded baseline).

    .venv/bin/python scripts/benchmark_longformer.py --markdown docs/benchmark-longformer.md

Heavy: ~10 minutes on 2 cores (HF eager at s=4096 takes ~30 s a call). --lengths / --repeat trim it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD_AT_START = os.getloadavg()[0]

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("hf-eager", "torch+extension", "ort:cpu-target")


def cpu_line() -> str:
    name, flags = platform.processor() or "cpu", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("cpu", "x86_64", ""):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, ISA: {' '.join(isa) or 'baseline x86-64'}"


def feed(sequence: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 50265, size=(1, sequence))
    glob = np.zeros((1, sequence), dtype=np.int64)
    glob[0, 0] = 1
    return {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((1, sequence), np.int64), "global_attention_mask": glob}


def build(work: Path, layers: int) -> None:
    """Random longformer-base (saved for the children) and its fused cpu-target ONNX model."""
    from tfopt.graph import fuse_file
    from tfopt.results import RunContext
    from tfopt_longformer.export import export_model
    from tfopt_longformer.models import TINY_CONFIGS, describe, random_model

    config = TINY_CONFIGS["longformer-base-random"]()
    config.num_hidden_layers = layers
    config.attention_window = [512] * layers
    source = describe(random_model(config), "longformer-base-random")
    from tfopt.torch_kit import no_progress_bar

    with no_progress_bar():
        source.model.save_pretrained(work / "hf")
    ctx = RunContext(family="longformer", source=None, work_dir=work, options={}, progress=lambda m: print(f"  {m}", flush=True))
    exported = export_model(ctx, source)
    fuse_file(exported.model_path, work / "optimized.onnx", exported.info, progress=ctx.progress)


def load_engine(engine: str, work: Path):
    """A callable running one forward pass on a feed dict."""
    import torch

    if engine == "ort:cpu-target":
        from tfopt.bench import ort_session

        session = ort_session(work / "optimized.onnx")
        return lambda f: session.run(None, f)
    from transformers import LongformerModel

    from tfopt.torch_kit import no_progress_bar
    from tfopt_longformer.modeling import LongformerForExport

    with no_progress_bar():
        model = LongformerModel.from_pretrained(work / "hf", add_pooling_layer=False).eval()
    module = model if engine == "hf-eager" else LongformerForExport(model).eval()
    if engine == "torch+extension":
        from tfopt_longformer.extension import load

        load()

    def call(f):
        with torch.inference_mode():
            return module(**{k: torch.from_numpy(v) for k, v in f.items()})

    return call


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def child(engine: str, sequence: int, work: Path) -> None:
    """Peak RSS of one call (after a warm-up call at s=64 so lazy allocations of loading are not counted)."""
    call = load_engine(engine, work)
    call(feed(64))
    baseline = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    call(feed(sequence))
    print(json.dumps({"peak_mb": _status("VmHWM"), "baseline_mb": baseline}))


def attention_only(lengths, repeat: int) -> list[tuple]:
    import torch
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    from tfopt.bench import time_interleaved
    from tfopt_longformer.modeling import PackedSelfAttention, op_masks

    torch.manual_seed(0)
    hf = LongformerSelfAttention(LongformerConfig(hidden_size=768, num_attention_heads=12, attention_window=[512]), 0).eval()
    ours = {impl: PackedSelfAttention(hf, impl) for impl in ("loops", "aten")}
    rows = []
    for sequence in lengths:
        x = torch.randn(1, sequence, 768)
        f = {k: torch.from_numpy(v) for k, v in feed(sequence).items()}
        ext = torch.zeros(1, sequence)
        ext[0, 0] = torch.finfo(torch.float32).max
        mask, glob = op_masks(f["attention_mask"], f["global_attention_mask"])

        def hf_call():
            with torch.inference_mode():
                return hf(x, attention_mask=ext, is_index_masked=ext < 0, is_index_global_attn=ext > 0, is_global_attn=True)[0]

        calls = {"hf-eager": hf_call}
        for impl, module in ours.items():
            calls[f"extension ({impl})"] = (lambda m=module: m(x, mask, glob))
        with torch.inference_mode():
            diff = max(float((calls[k]() - hf_call()).abs().max()) for k in calls if k != "hf-eager")
        times = {k: float(np.median(v)) for k, v in time_interleaved(calls, warmup=1, repeat=repeat, block=1).items()}
        rows.append((sequence, times, diff))
        print(f"  attention s={sequence}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in times.items()) + f" (max diff {diff:.1e})", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "SEQUENCE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.child:
        child(args.child[0], int(args.child[1]), Path(args.child[2]))
        return 0
    import warnings

    warnings.filterwarnings("ignore")
    from tfopt.bench import time_interleaved

    lengths = [int(s) for s in args.lengths.split(",")]
    if any(s <= 0 or s % 512 for s in lengths):
        parser.error("--lengths must be multiples of 512 (HF's LongformerSelfAttention alone needs multiples of attention_window)")
    print(cpu_line(), flush=True)
    print("1. self-attention alone (one layer, hidden 768, 12 heads, window 512)", flush=True)
    attention = attention_only(lengths, args.repeat)
    with tempfile.TemporaryDirectory(prefix="tfopt-bench-longformer-") as tmp:
        work = Path(tmp)
        print(f"building longformer-base ({args.layers} layers, random weights) and its cpu-target ONNX model ...", flush=True)
        start = time.perf_counter()
        build(work, args.layers)
        print(f"  built in {time.perf_counter() - start:.0f} s", flush=True)
        print("2. end to end, interleaved", flush=True)
        calls = {engine: load_engine(engine, work) for engine in ENGINES}
        end_to_end = []
        for sequence in lengths:
            f = feed(sequence)
            times = time_interleaved({k: (lambda c=c: c(f)) for k, c in calls.items()}, warmup=1, repeat=args.repeat, block=1)
            medians = {k: float(np.median(v)) for k, v in times.items()}
            end_to_end.append((sequence, medians))
            print(f"  s={sequence}: " + ", ".join(f"{k} {v:.2f} s" for k, v in medians.items()), flush=True)
        del calls
        memory = []
        if not args.skip_memory:
            print("3. peak RSS of one call, fresh process per engine and length", flush=True)
            for sequence in lengths:
                row = {}
                for engine in ENGINES:
                    out = subprocess.run([sys.executable, __file__, "--child", engine, str(sequence), str(work)],
                                         capture_output=True, text=True, check=True)
                    row[engine] = json.loads(out.stdout.strip().splitlines()[-1])
                memory.append((sequence, row))
                print(f"  s={sequence}: " + ", ".join(f"{k} {v['peak_mb']:.0f} MB (+{v['peak_mb'] - v['baseline_mb']:.0f})" for k, v in row.items()), flush=True)
    text = report(attention, end_to_end, memory, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


def report(attention, end_to_end, memory, args) -> str:
    lines = [
        "# Longformer on the CPU: HF eager vs the C++ extension vs ONNX Runtime",
        "",
        f"Machine: {cpu_line()}. torch threads: {__import__('torch').get_num_threads()}; ONNX Runtime: default threads.",
        f"Load average {LOAD_AT_START:.2f} at the start (more than ~1 on 2 cores: other work shared the run). The ratios",
        "come from engines timed interleaved in one run (median of "
        f"{args.repeat} calls after a warm-up call). Random weights at longformer-base shape ({args.layers} layers,",
        "hidden 768, 12 heads, attention_window 512), batch 1, full-length rows, one global (CLS) token.",
        "Command: `.venv/bin/python scripts/benchmark_longformer.py --markdown docs/benchmark-longformer.md`",
        "",
        "## Self-attention alone (one layer)",
        "",
        "| s | HF eager | extension (loops) | extension (ATen) | HF / loops | HF / ATen | max diff vs HF |",
        "|---|---|---|---|---|---|---|",
    ]
    for sequence, t, diff in attention:
        hf, loops, aten = t["hf-eager"], t["extension (loops)"], t["extension (aten)"]
        lines.append(f"| {sequence} | {hf * 1e3:.0f} ms | {loops * 1e3:.0f} ms | {aten * 1e3:.0f} ms | {hf / loops:.2f}x | {hf / aten:.2f}x | {diff:.1e} |")
    lines += ["", "## End to end", "", "| s | HF eager | torch+extension | ORT cpu-target | HF / extension | HF / ORT |", "|---|---|---|---|---|---|"]
    for sequence, t in end_to_end:
        hf, ext, ort = t["hf-eager"], t["torch+extension"], t["ort:cpu-target"]
        lines.append(f"| {sequence} | {hf:.2f} s | {ext:.2f} s | {ort:.2f} s | {hf / ext:.2f}x | {hf / ort:.2f}x |")
    if memory:
        lines += ["", "## Peak RSS of one call (MB; in parentheses the growth over the loaded model)", "",
                  "| s | HF eager | torch+extension | ORT cpu-target |", "|---|---|---|---|"]
        for sequence, row in memory:
            cells = [f"{row[e]['peak_mb']:.0f} (+{row[e]['peak_mb'] - row[e]['baseline_mb']:.0f})" for e in ENGINES]
            lines.append(f"| {sequence} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
