"""Latency and size of fp32 vs QAT int8 vs PTQ dynamic int8, ONNX Runtime on this CPU, interleaved in one run.

Two models:
  real       the three final models of a finished `tfopt run --plugin qat --precision int8` (--run-dir),
             all-MiniLM-L6-v2 fine-tuned on the default data;
  bert-base  a random-weight bert-base classifier (12 layers, hidden 768) made here the same way:
             fake-quantized Linears whose ranges are observed on a few random batches (latency does
             not depend on the weights' values, so no training), fused, trained-form Q/DQ inserted.

Every model is timed at the same shape (default batch 1, sequence 128), the engines alternating in
blocks (tfopt.bench.time_interleaved) so the machine's noise lands on all of them. Prints the CPU's
int8 instruction sets (AVX2 / AVX-512 VNNI / AMX) next to the figures.

Usage: python scripts/benchmark_qat.py --run-dir out/ [--no-bert-base] [--repeat 40] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine_limits import cpu_isa  # noqa: E402

ENGINES = ("fp32", "int8 QAT (Q/DQ, trained scales)", "int8 PTQ dynamic")


def size_mb(path: Path) -> float:
    from tfopt.graph.io import model_files

    return sum(p.stat().st_size for p in model_files(path)) / 1e6


def real_models(run_dir: Path) -> dict[str, Path]:
    files = dict(zip(ENGINES, ("optimized.fp32.onnx", "optimized.onnx", "optimized.fp32.int8.onnx")))
    models = {label: run_dir / name for label, name in files.items()}
    missing = [str(p) for p in models.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"{run_dir}: not a finished qat int8 run ({', '.join(missing)} missing)")
    return models


def bert_base_models(work: Path, progress) -> dict[str, Path]:
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    from tfopt import precision
    from tfopt.graph import fuse_file, load_model
    from tfopt.graph.validate import write_validated
    from tfopt.results import ModelInfo
    from tfopt_qat.fakequant import freeze_observers, prepare_qat, strip_qat, trained_quantization
    from tfopt_qat.onnx_export import export_logits
    from tfopt_qat.qdq import insert_qdq

    torch.manual_seed(0)
    config = BertConfig(num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    progress("bert-base: observing activation ranges on random batches ...")
    prepare_qat(model)
    with torch.inference_mode():
        for _ in range(4):
            ids = torch.randint(0, config.vocab_size, (4, 128))
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    freeze_observers(model)
    quants = trained_quantization(model)
    info = ModelInfo("bert", config.num_attention_heads, config.hidden_size, config.num_hidden_layers)
    progress("bert-base: export, fuse, Q/DQ, PTQ ...")
    export_logits(strip_qat(model), work / "exported.onnx")
    fuse_file(work / "exported.onnx", work / "optimized.fp32.onnx", info)

    def build(skip):
        fused = load_model(work / "optimized.fp32.onnx")
        insert_qdq(fused, quants)
        return fused, None, []

    write_validated(build, work / "optimized.onnx", work / "optimized.fp32.onnx", precision="int8", validate=False)
    ptq = precision.convert(work / "optimized.fp32.onnx", "int8")
    return dict(zip(ENGINES, (work / "optimized.fp32.onnx", work / "optimized.onnx", ptq.model_path)))


def time_models(models: dict[str, Path], batch: int, sequence: int, repeat: int) -> dict[str, float]:
    from tfopt.bench import ort_session, time_interleaved
    from tfopt.feeds import session_feed

    sessions = {label: ort_session(path) for label, path in models.items()}
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 20000, (batch, sequence)), "attention_mask": np.ones((batch, sequence), np.int64),
            "token_type_ids": np.zeros((batch, sequence), np.int64)}
    calls = {}
    for label, session in sessions.items():
        names = {i.name for i in session.get_inputs()}
        prepared = session_feed(session, {k: v for k, v in feed.items() if k in names})
        calls[label] = lambda s=session, p=prepared: s.run(None, p)
    times = time_interleaved(calls, warmup=3, repeat=repeat)
    return {label: float(np.median(t)) * 1000 for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a finished `tfopt run --plugin qat --precision int8` directory")
    parser.add_argument("--no-bert-base", action="store_true", help="skip the bert-base-shape models")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    progress = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    sets = {}
    if args.run_dir:
        sets[f"qat run {args.run_dir.name}"] = real_models(args.run_dir)
    with tempfile.TemporaryDirectory(prefix="benchmark-qat-") as tmp:
        if not args.no_bert_base:
            sets["bert-base shape (random weights)"] = bert_base_models(Path(tmp), progress)
        if not sets:
            raise SystemExit("nothing to time: give --run-dir and/or leave out --no-bert-base")
        lines = [
            f"CPU: {cpu_isa()} (int8 instruction sets present); batch {args.batch}, sequence {args.sequence}; "
            f"median of {args.repeat} calls per engine, engines interleaved; ONNX Runtime CPU provider, default threads.",
            "",
            "| model | engine | p50 ms | vs fp32 | size on disk MB |",
            "|---|---|---|---|---|",
        ]
        for name, models in sets.items():
            progress(f"timing {name} ...")
            start = time.perf_counter()
            medians = time_models(models, args.batch, args.sequence, args.repeat)
            for label, path in models.items():
                lines.append(f"| {name} | {label} | {medians[label]:.2f} | {medians[label] / medians[ENGINES[0]]:.2f}x | {size_mb(path):.1f} |")
            progress(f"  ({time.perf_counter() - start:.0f} s)")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
