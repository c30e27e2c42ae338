"""Accuracy of a finished default qat run on every default-data example its training never saw.

The default run samples 2,000 of the 4,866 labelled snippets (500 held out, 1,500 trained on), so
its held-out figure rests on 500 examples: QAT and PTQ differ there by a handful. This script
scores the run's three ONNX models (fp32, QAT int8, PTQ dynamic int8) on the 500 held-out
snippets plus the 2,866 never sampled, and counts the examples on which QAT and PTQ disagree
about correctness (an exact two-sided sign test on those), so a difference can be told from noise.

    .venv/bin/python scripts/evaluate_qat_unseen.py --run-dir out/ [--markdown FILE]

``out/`` must come from `tfopt run --plugin qat --output out/` with the default data and sampling
options (the script rebuilds the run's split from the same seed and refuses other settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from tfopt_qat.data import load_dataset
from tfopt_qat.evaluate import accuracy_f1, onnx_logits
from tfopt_qat.train import TrainConfig, prepare

MODELS = {
    "ONNX fp32": "optimized.fp32.onnx",
    "ONNX int8 (QAT)": "optimized.onnx",
    "ONNX int8 (PTQ dynamic)": "optimized.fp32.int8.onnx",
}


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact binomial test of wins vs losses under p = 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(0, min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def unseen_split(config: TrainConfig):
    """The run's held-out examples plus every example its sample left out, as one Dataset."""
    sampled = prepare(config)
    used = config.max_examples
    everything = load_dataset(None, max_examples=0, eval_fraction=used / len(_all_rows(config)), seed=config.seed)
    # with eval_fraction = used / total, "eval" is the run's whole sample and "train" what it never drew
    dataset = dataclasses.replace(
        sampled.dataset,
        eval_texts=sampled.dataset.eval_texts + everything.train_texts,
        eval_labels=sampled.dataset.eval_labels + everything.train_labels,
    )
    return dataclasses.replace(sampled, dataset=dataset), len(sampled.dataset.eval_texts), len(everything.train_texts)


def _all_rows(config: TrainConfig) -> list[str]:
    full = load_dataset(None, max_examples=0, seed=config.seed)
    return full.train_texts + full.eval_texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    options = json.loads((args.run_dir / "report.json").read_text())["options"]
    config = TrainConfig.from_options(None, options)
    if config.data is not None or config.max_examples == 0:
        raise SystemExit("evaluate_qat_unseen: needs a run on the default data with its default sampling (max_examples > 0)")
    prepared, held_out, never_drawn = unseen_split(config)
    labels = np.asarray(prepared.dataset.eval_labels)
    predictions = {name: onnx_logits(args.run_dir / file, prepared).argmax(-1) for name, file in MODELS.items()}
    lines = [
        f"# QAT run {args.run_dir.name}: {len(labels)} examples training never saw "
        f"({held_out} held out + {never_drawn} never sampled)",
        "",
        "| model | accuracy | macro F1 | agreement with fp32 |",
        "|---|---|---|---|",
    ]
    for name, predicted in predictions.items():
        accuracy, f1 = accuracy_f1(labels, predicted, prepared.dataset.num_labels)
        agreement = float((predicted == predictions["ONNX fp32"]).mean())
        lines.append(f"| {name} | {100 * accuracy:.2f}% | {100 * f1:.2f} | {100 * agreement:.2f}% |")
    qat_right = predictions["ONNX int8 (QAT)"] == labels
    ptq_right = predictions["ONNX int8 (PTQ dynamic)"] == labels
    wins, losses = int((qat_right & ~ptq_right).sum()), int((~qat_right & ptq_right).sum())
    lines += [
        "",
        f"QAT right where PTQ is wrong: {wins}; PTQ right where QAT is wrong: {losses}; "
        f"two-sided sign test p = {sign_test_p(wins, losses):.3f}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
