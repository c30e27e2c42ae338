"""A small GPT-2 trained on real text, so that quantization is judged on a model with structure.

No trained GPT-2 weights can be downloaded here, and a random GPT-2's logits are nearly
flat (next-token agreement on it means nothing). So this module trains a byte-level GPT-2
(vocabulary: the 256 byte values) on the docstrings of Python's standard library, which
every machine running tfopt has. Training is deterministic by seed (same corpus, same
batches, same initial weights; float summation order can differ across thread counts)
and cached under ``tfopt.run_cache.cache_root()`` ($TFOPT_CACHE_DIR, default ``~/.cache/tfopt``) keyed by the spec and
the corpus's hash, so a second run loads it in a second.

Every 10th docstring is held out: :func:`heldout_bytes` is the text quality is measured on.
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

from tfopt.errors import TfoptError
from tfopt.run_cache import cache_root

HOLDOUT_EVERY = 10  # docstring i is held out when i % HOLDOUT_EVERY == 0


@dataclass(frozen=True)
class TextModelSpec:
    """Shape and training budget of one trained model."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    steps: int
    batch_size: int
    sequence_length: int
    learning_rate: float = 3e-3
    seed: int = 20261205


TEXT_MODELS = {
    # ~0.8M parameters, ~4 minutes on one core of the development machine: held-out perplexity ~5 per byte.
    "stdlib-gpt2": TextModelSpec(n_layer=4, n_embd=128, n_head=4, n_positions=256, steps=700, batch_size=32, sequence_length=128),
    # For tests: trained in ~10-20 s, already far from flat (the byte statistics of English and code).
    "stdlib-gpt2-tiny": TextModelSpec(n_layer=2, n_embd=64, n_head=4, n_positions=128, steps=150, batch_size=16, sequence_length=64),
}


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


def cache_dir() -> Path:
    return cache_root() / "gpt2-text"


def _key(spec: TextModelSpec, train: bytes) -> str:
    import torch

    text = json.dumps({"spec": asdict(spec), "corpus": hashlib.sha256(train).hexdigest(), "torch": torch.__version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trained_model(name: str, *, attn_implementation: str = "sdpa", progress: Callable[[str], None] | None = None):
    """The trained GPT2LMHeadModel ``name`` (a key of :data:`TEXT_MODELS`), from the cache or trained now."""
    from transformers import GPT2LMHeadModel

    from tfopt.torch_kit import no_progress_bar

    if name not in TEXT_MODELS:
        raise TfoptError(f"unknown text model {name!r}; known: {', '.join(TEXT_MODELS)}")
    spec = TEXT_MODELS[name]
    train, _ = corpus()
    target = cache_dir() / f"{name}-{_key(spec, train)}"
    if not (target / "config.json").is_file():
        model = train_model(spec, train, progress=progress or (lambda message: None))
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model.save_pretrained(scratch)
            try:
                os.replace(scratch, target)  # atomic; another process may have won the race
            except OSError:
                if not (target / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    with no_progress_bar():
        model = GPT2LMHeadModel.from_pretrained(target, local_files_only=True, attn_implementation=attn_implementation)
    return model.eval()


def config_for(spec: TextModelSpec):
    from transformers import GPT2Config

    newline = ord("\n")
    return GPT2Config(
        vocab_size=256, n_positions=spec.n_positions, n_embd=spec.n_embd, n_layer=spec.n_layer, n_head=spec.n_head,
        bos_token_id=newline, eos_token_id=newline, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )


def train_model(spec: TextModelSpec, train: bytes, *, progress: Callable[[str], None]):
    """Train a fresh GPT2LMHeadModel on ``train`` (AdamW, cosine schedule), deterministic by ``spec.seed``."""
    import torch
    from transformers import GPT2LMHeadModel

    data = torch.from_numpy(np.frombuffer(train, dtype=np.uint8).astype(np.int64))
    rng = np.random.default_rng(spec.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = GPT2LMHeadModel(config_for(spec))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.learning_rate, total_steps=spec.steps, pct_start=0.1)
    started, last_report = time.perf_counter(), time.perf_counter()
    progress(f"training the text model ({spec.steps} steps, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; cached afterwards) ...")
    for step in range(spec.steps):
        starts = rng.integers(0, len(data) - spec.sequence_length - 1, size=spec.batch_size)
        batch = torch.stack([data[s : s + spec.sequence_length] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if time.perf_counter() - last_report > 30 or step == spec.steps - 1:
            last_report = time.perf_counter()
            progress(f"text model step {step + 1}/{spec.steps}: loss {loss.item():.3f} ({last_report - started:.0f} s)")
    return model.eval()
