"""GPT-2 decoding benchmark: PyTorch eager vs ORT on the raw export vs ORT on tfopt's output, one run.

Exports a random-weight GPT-2 (GPT-2 small's shape by default) through the gpt2 adapter,
fuses it with tfopt, and times the decode step (sequence 1) over batch sizes x past
lengths plus the prompt step, and a greedy generation whose tokens must equal PyTorch's.
Prints markdown tables (and writes them with --markdown).

Usage: python scripts/benchmark_gpt2.py [--model gpt2-small-random] [--exporter dynamo]
       [--batch 1,8,32,128] [--past 4,8,32,128] [--prompt 32] [--repeat 20] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-small-random")
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"])
    parser.add_argument("--batch", default="1,8,32,128")
    parser.add_argument("--past", default="4,8,32,128")
    parser.add_argument("--prompt", default="32")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--generate", type=int, default=16, help="greedy tokens to generate (0: skip)")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from tfopt.graph import fuse_file
    from tfopt.results import RunContext
    from tfopt_gpt2.benchmark import benchmark_models
    from tfopt_gpt2.export import export_source

    work = Path(tempfile.mkdtemp(prefix="tfopt-gpt2-bench-"))
    ctx = RunContext(
        family="gpt2",
        source=args.model,
        work_dir=work,
        options={
            "exporter": args.exporter,
            "bench_batch_sizes": args.batch,
            "bench_past_lengths": args.past,
            "bench_prompt_lengths": args.prompt,
            "bench_repeat": args.repeat,
            "bench_generate_tokens": args.generate,
        },
        progress=lambda message: print(message, flush=True),
    )
    exported = export_source(ctx)
    fused = fuse_file(exported.model_path, work / "optimized.onnx", exported.info)
    print(f"fused in {fused.seconds:.2f} s: {fused.op_counts}; missing: {fused.missing or 'none'}", flush=True)
    result = benchmark_models(ctx, exported, {"ort:raw": exported.model_path, "ort:tfopt": fused.model_path})

    raw = {(r.step, r.batch_size, r.past_length, r.sequence_length): r.p50_ms for r in result.rows if r.engine == "ort:raw"}
    lines = [
        f"# GPT-2 benchmark ({time.strftime('%Y-%m-%d')}, {args.model}, {args.exporter} export, fp32, "
        f"CPU x{os.cpu_count()}, onnxruntime {ort.__version__}, torch {torch.__version__})",
        "",
        "| step | batch | past | seq | engine | p50 ms | p90 ms | p99 ms | tokens/s | vs ORT raw |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        ratio = r.p50_ms / raw[(r.step, r.batch_size, r.past_length, r.sequence_length)]
        lines.append(
            f"| {r.step} | {r.batch_size} | {r.past_length} | {r.sequence_length} | {r.engine} | {r.p50_ms:.2f} | "
            f"{r.p90_ms:.2f} | {r.p99_ms:.2f} | {r.tokens_per_second:.0f} | {ratio:.3f}x |"
        )
    if result.generation:
        lines += ["", "| greedy generation | batch | prompt | new tokens | seconds | tokens/s | same tokens as torch |", "|---|---|---|---|---|---|---|"]
        for g in result.generation:
            same = "-" if g.matches_torch is None else ("yes" if g.matches_torch else "NO")
            lines.append(f"| {g.engine} | {g.batch_size} | {g.prompt_length} | {g.new_tokens} | {g.seconds:.2f} | {g.tokens_per_second:.0f} | {same} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
