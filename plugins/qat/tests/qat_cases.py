"""Shared test data: a small, easy, deterministic sentiment task a tiny model learns in seconds."""

from __future__ import annotations

import csv
import random
from pathlib import Path

GOOD = ["great", "wonderful", "moving", "brilliant", "delightful", "superb", "charming", "excellent"]
BAD = ["dull", "awful", "boring", "clumsy", "tedious", "dreadful", "lifeless", "terrible"]
SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the script", "the ending", "the cast", "the story"]

# Settings that train tiny-bert on the task quickly (the defaults are for the real model).
TINY_OPTIONS = {
    "max_examples": 0, "max_length": 16, "batch_size": 16, "epochs": 3, "qat_epochs": 1,
    "lr": 2e-3, "qat_lr": 2e-4, "checkpoint_every": 1000,
}


def easy_rows(count: int = 240, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        positive = i % 2 == 0
        words = GOOD if positive else BAD
        text = f"{rng.choice(SUBJECTS)} was {rng.choice(words)} and {rng.choice(words)}"
        rows.append({"text": text, "label": "pos" if positive else "neg"})
    return rows


def write_csv(path: Path, rows: list[dict], fields=("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
