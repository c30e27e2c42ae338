"""What validation costs: `tfopt optimize` wall time with and without it, on a bert-base-shaped model.

Each round runs both commands in fresh subprocesses, in alternating order (the machine's
noise lands on both); prints per-round times, medians, the overhead ratio and the CPU.
The model is a random-weight bert-base exported by torch's default (dynamo) exporter, so
its weights are external data, as users' models are.

Usage: python scripts/benchmark_validation.py [--model exported.onnx] [--rounds 5] [--markdown FILE]
Without --model, the bert_pt adapter exports one into a temp dir first.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_description() -> str:
    """The CPU's model name and the instruction sets that matter for these kernels."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == (platform.processor() or "unknown CPU"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if flag in flags]
    return f"{name} ({', '.join(isa) or 'no AVX2'})"


def export_bert_base(work: Path) -> Path:
    from tfopt.results import RunContext
    from tfopt_bert_pt.export import export_model
    from tfopt_bert_pt.models import random_bert

    ctx = RunContext(family="bert_pt", source=None, work_dir=work, options={"exporter": "dynamo"})
    return export_model(ctx, random_bert()).model_path


def timed_optimize(model: Path, output: Path, validate: bool) -> float:
    command = [sys.executable, "-m", "tfopt.optimizer", "--input", str(model), "--output", str(output)]
    if not validate:
        command.append("--no_validate")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"tfopt optimize failed: {done.stderr.strip()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or export_bert_base(work / "export")
        times: dict[bool, list[float]] = {True: [], False: []}
        for round_index in range(args.rounds):
            order = (True, False) if round_index % 2 == 0 else (False, True)
            for validate in order:
                times[validate].append(timed_optimize(model, work / f"out-{validate}.onnx", validate))
            print(f"round {round_index + 1}: validated {times[True][-1]:.2f} s, unvalidated {times[False][-1]:.2f} s", flush=True)
    with_validation, without = statistics.median(times[True]), statistics.median(times[False])
    ratios = [a / b for a, b in zip(times[True], times[False])]
    lines = [
        f"`tfopt optimize` on a bert-base-shaped dynamo export (external data), {args.rounds} rounds, fresh processes, CPU: {cpu_description()}",
        "",
        "| | median wall time |",
        "|---|---|",
        f"| with validation (default) | {with_validation:.2f} s |",
        f"| `--no_validate` | {without:.2f} s |",
        f"| overhead | {with_validation / without - 1:+.1%} (per round: {min(ratios) - 1:+.1%} to {max(ratios) - 1:+.1%}) |",
    ]
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
