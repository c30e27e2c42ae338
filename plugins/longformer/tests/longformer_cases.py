"""Helpers the longformer test files share (a unique module name: pytest puts this dir on sys.path)."""

from __future__ import annotations

import numpy as np
import torch

# (batch, sequence, global positions of row 0); row i > 0 is padded and has one global token of its own.
# Lengths below, at and above multiples of the window (8), 1, and a sequence of many chunks.
SHAPES = [(1, 1, []), (1, 5, [0]), (2, 8, [0]), (2, 13, [0, 7]), (3, 37, [0, 3, 20]), (2, 64, []), (2, 203, [0, 50, 202])]


def feed(batch: int, sequence: int, globals_: list[int], *, vocab: int = 100, pad: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """ids/attention_mask/global_attention_mask with rows right-padded and global tokens placed."""
    g = torch.Generator().manual_seed(seed + 1000 * batch + sequence)
    ids = torch.randint(3, vocab, (batch, sequence), generator=g)
    mask = torch.ones(batch, sequence, dtype=torch.long)
    for row in range(1, batch):
        mask[row, max(1, sequence - row * sequence // (batch + 1)):] = 0
    ids[mask == 0] = pad
    glob = torch.zeros(batch, sequence, dtype=torch.long)
    for position in globals_:
        glob[0, position] = 1
    if batch > 1 and globals_:
        glob[1, globals_[-1] // 2] = 1
    return {"input_ids": ids, "attention_mask": mask, "global_attention_mask": glob}


def hf_hidden(model, tensors) -> np.ndarray:
    with torch.inference_mode():
        return model(**tensors).last_hidden_state.numpy()


def max_valid_diff(reference: np.ndarray, actual: np.ndarray, mask) -> float:
    valid = np.asarray(mask).astype(bool)
    assert reference.shape == actual.shape
    assert np.isfinite(actual[valid]).all()
    return float(np.abs(reference - actual)[valid].max())
