"""TensorFlow/Keras BERT benchmark: TF eager, tf.function, ORT raw and ORT on tfopt's output, one run.

Run it in the TF deployment (.venv-tf). Converts a random-weight bert-base-shaped model
through the chosen adapter (tf2onnx, ~90 s at bert-base size), fuses it with tfopt, and
times every engine on the same inputs; ratios are against TF eager (TF-Blade's reported
bar is 3.66x over TF for BERT fp32 with TensorRT).

Usage: .venv-tf/bin/python scripts/benchmark_tf.py [--plugin bert_tf|bert_keras]
       [--model random-bert-base-tf] [--batch 1] [--seq 128] [--repeat 20] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time
from pathlib import Path

_DEFAULT_MODELS = {"bert_tf": "random-bert-base-tf", "bert_keras": "random-keras-hub-bert-base"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plugin", default="bert_tf", choices=sorted(_DEFAULT_MODELS))
    parser.add_argument("--model", help="source (default: the plugin's bert-base-shaped random model)")
    parser.add_argument("--batch", default="1")
    parser.add_argument("--seq", default="128")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    import onnxruntime as ort
    import tensorflow as tf

    from tfopt.graph import fuse_file
    from tfopt.results import RunContext

    hooks = importlib.import_module(f"tfopt_{args.plugin}.hooks")
    source = args.model or _DEFAULT_MODELS[args.plugin]
    work = Path(tempfile.mkdtemp(prefix="tfopt-tf-bench-"))
    ctx = RunContext(
        family=args.plugin,
        source=source,
        work_dir=work,
        options={"bench_batch_sizes": args.batch, "bench_sequence_lengths": args.seq, "bench_repeat": args.repeat},
        progress=lambda message: print(message, flush=True),
    )
    start = time.perf_counter()
    exported = hooks.export_hook(ctx)
    print(f"converted in {time.perf_counter() - start:.1f} s", flush=True)
    fused = fuse_file(exported.model_path, work / "optimized.onnx", exported.info)
    print(f"fused in {fused.seconds:.2f} s: {fused.op_counts}; missing: {fused.missing or 'none'}", flush=True)
    result = hooks.benchmark_hook(ctx, exported, {"ort:raw": exported.model_path, "ort:tfopt": fused.model_path})

    eager = {(r.batch_size, r.sequence_length): r.p50_ms for r in result.rows if r.engine == "tf:eager"}
    lines = [
        f"# TF/Keras BERT benchmark ({time.strftime('%Y-%m-%d')}, {args.plugin}, {source}, fp32, CPU x{os.cpu_count()}, "
        f"tensorflow {tf.__version__}, onnxruntime {ort.__version__})",
        "",
        "| engine | batch | seq | p50 ms | p90 ms | p99 ms | speed-up vs TF eager |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        base = eager.get((r.batch_size, r.sequence_length))
        speedup = f"{base / r.p50_ms:.2f}x" if base else "-"
        lines.append(f"| {r.engine} | {r.batch_size} | {r.sequence_length} | {r.p50_ms:.2f} | {r.p90_ms:.2f} | {r.p99_ms:.2f} | {speedup} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
