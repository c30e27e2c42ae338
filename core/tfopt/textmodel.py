"""Small models trained here on real text, so that quantization and generation are judged on a model with structure.

No trained weights can be downloaded here, and a random model's logits are nearly flat
(next-token agreement on it means nothing). So the decoder adapters train byte-level models
(vocabulary: the 256 byte values) on the docstrings of Python's standard library, which every
machine running tfopt has. An adapter states the architecture (a transformers model built
from a config), a :class:`TrainingBudget` and, beyond next-byte prediction, its task (the
seq2seq adapter's span restoration); this module holds the text, the training loop
and the cache. Training is deterministic by seed (same corpus, same batches, same initial
weights; float summation order can differ across thread counts) and cached under
``tfopt.run_cache.cache_root()`` ($TFOPT_CACHE_DIR, default ``~/.cache/tfopt``) keyed by the
architecture, the budget and the corpus's hash, so a second run loads it in a second.

Every 10th docstring is held out: :func:`heldout_bytes` is the text quality is measured on
(:mod:`tfopt.text_quality`); calibration may see :func:`training_bytes` only.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import TfoptError
from .run_cache import cache_root

HOLDOUT_EVERY = 10  # docstring i is held out when i % HOLDOUT_EVERY == 0
NEWLINE = ord("\n")  # the byte models' BOS/EOS


@dataclass(frozen=True)
class TrainingBudget:
    steps: int
    batch_size: int
    sequence_length: int
    learning_rate: float = 3e-3
    seed: int = 20261205


def _docstrings() -> list[str]:
    """The docstrings of the standard library's top-level modules, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text and len(text) >= 40:
                    texts.append(text)
    if len(texts) < 100:
        raise TfoptError(f"{stdlib}: too few docstrings ({len(texts)}) to train the text model on")
    return texts


@functools.cache  # parsing the standard library's sources takes seconds; training and held-out text both ask
def corpus() -> tuple[bytes, bytes]:
    """(training bytes, held-out bytes): docstrings joined by blank lines, every 10th held out."""
    texts = _docstrings()
    train = "\n\n".join(t for i, t in enumerate(texts) if i % HOLDOUT_EVERY)
    heldout = "\n\n".join(t for i, t in enumerate(texts) if i % HOLDOUT_EVERY == 0)
    return train.encode("utf-8"), heldout.encode("utf-8")


def heldout_bytes() -> np.ndarray:
    """The held-out text as int64 token ids (its bytes)."""
    return np.frombuffer(corpus()[1], dtype=np.uint8).astype(np.int64)


def training_bytes() -> np.ndarray:
    """The training text as int64 token ids: what calibration may see (never the held-out text)."""
    return np.frombuffer(corpus()[0], dtype=np.uint8).astype(np.int64)


def cache_dir(family: str) -> Path:
    return cache_root() / f"{family}-text"


def causal_lm_batch(data, rng: np.random.Generator, budget: TrainingBudget) -> dict:
    """Next-byte prediction on random windows of the text: the decoder LLMs' task."""
    import torch

    starts = rng.integers(0, len(data) - budget.sequence_length - 1, size=budget.batch_size)
    batch = torch.stack([data[s : s + budget.sequence_length] for s in starts])
    return {"input_ids": batch, "labels": batch}


def _key(config, budget: TrainingBudget, train: bytes, make_batch: Callable = causal_lm_batch) -> str:
    import torch

    identity = {"config": config.to_diff_dict(), "budget": asdict(budget), "corpus": hashlib.sha256(train).hexdigest(), "torch": torch.__version__}
    if make_batch is not causal_lm_batch:  # another task is another model (the causal LMs' keys stay as they were)
        identity["task"] = f"{make_batch.__module__}.{make_batch.__qualname__}"
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trained_model(name: str, family: str, config, model_class, budget: TrainingBudget, *,
                  attn_implementation: str = "sdpa", progress: Callable[[str], None] | None = None,
                  make_batch: Callable = causal_lm_batch):
    """``model_class`` built from ``config``, trained on the stdlib text with ``budget``: from the cache or trained now.

    ``make_batch(data, rng, budget)`` draws one batch of the task (the model's keyword arguments,
    labels included) from the training text as an int64 tensor of bytes; default next-byte prediction.
    """
    from .torch_kit import no_progress_bar

    train, _ = corpus()
    target = cache_dir(family) / f"{name}-{_key(config, budget, train, make_batch)}"
    if not (target / "config.json").is_file():
        model = train_model(model_class, config, budget, train, progress=progress or (lambda message: None), make_batch=make_batch)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with no_progress_bar():  # transformers' "Writing model shards" bar
                model.save_pretrained(scratch)
            try:
                os.replace(scratch, target)  # atomic; another process may have won the race
            except OSError:
                if not (target / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    with no_progress_bar():
        model = model_class.from_pretrained(target, local_files_only=True, attn_implementation=attn_implementation)
    return model.eval()


def train_model(model_class, config, budget: TrainingBudget, train: bytes, *, progress: Callable[[str], None],
                make_batch: Callable = causal_lm_batch):
    """Train a fresh ``model_class(config)`` on ``train`` (AdamW, one-cycle schedule), deterministic by ``budget.seed``."""
    import torch

    data = torch.from_numpy(np.frombuffer(train, dtype=np.uint8).astype(np.int64))
    rng = np.random.default_rng(budget.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(budget.seed)
        model = model_class(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=budget.learning_rate, total_steps=budget.steps, pct_start=0.1)
    started, last_report = time.perf_counter(), time.perf_counter()
    progress(f"training the text model ({budget.steps} steps, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; cached afterwards) ...")
    for step in range(budget.steps):
        loss = model(**make_batch(data, rng, budget)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if time.perf_counter() - last_report > 30 or step == budget.steps - 1:
            last_report = time.perf_counter()
            progress(f"text model step {step + 1}/{budget.steps}: loss {loss.item():.3f} ({last_report - started:.0f} s)")
    return model.eval()
