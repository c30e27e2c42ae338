"""What a precision change does to a trained decoder's predictions, measured on held-out text.

Three figures, each candidate ONNX decoder against a reference one (fp32), on the same
token windows: next-token top-1 agreement over every position, perplexity of the text
under each (and its relative change), and greedy generation of ``new_tokens`` tokens from
prompts cut out of the text (rows identical to the reference's, and tokens agreeing
position by position). Meant for :mod:`tfopt.textmodel`'s trained models (the gpt2 and llama
adapters' ``stdlib-*``): on random weights the logits are nearly flat and agreement says nothing.
The sessions are decoding-step exports in :mod:`tfopt.causal_lm`'s layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .causal_lm import ATTENTION_MASK, INPUT_IDS, POSITION_IDS
from .feeds import session_feed
from .generation import empty_past, generate_onnx


@dataclass
class TextQuality:
    """One candidate against the reference on the same windows and prompts."""

    positions: int  # next-token predictions compared
    top1_agreement: float
    perplexity: float  # of the held-out windows under the candidate
    reference_perplexity: float
    generation_rows: int
    generation_rows_identical: int
    generation_token_agreement: float  # fraction of generated tokens equal at the same step
    # per row whose generation differs: the reference's top-1 minus top-2 logit at the first differing
    # step. Small gaps mean the rows parted at a near tie, where any rounding may pick either token.
    divergence_gaps: tuple[float, ...] = ()
    logit_difference_std: float = 0.0  # of candidate minus reference logits over the windows: the rounding's noise

    @property
    def perplexity_change(self) -> float:
        return self.perplexity / self.reference_perplexity - 1.0


def windows(tokens: np.ndarray, count: int, length: int) -> np.ndarray:
    """``count`` windows of ``length`` tokens spread evenly over ``tokens`` (count, length)."""
    if len(tokens) < length + 1:
        raise ValueError(f"text of {len(tokens)} tokens is shorter than one window of {length}")
    starts = np.linspace(0, len(tokens) - length - 1, count).astype(np.int64)
    return np.stack([tokens[s : s + length] for s in starts])


def window_feed(session, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The feed of one prompt step (empty past) over whole windows ``ids`` (batch, length)."""
    batch, length = ids.shape
    feed = {
        INPUT_IDS: ids,
        ATTENTION_MASK: np.ones((batch, length), dtype=np.int64),
        POSITION_IDS: np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy(),
        **empty_past(session, batch),
    }
    return session_feed(session, feed)


def window_logits(session, ids: np.ndarray) -> np.ndarray:
    """Logits (batch, length, vocab) of whole windows in one prompt step (empty past)."""
    return session.run(["logits"], window_feed(session, ids))[0]


def _nll(logits: np.ndarray, targets: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return float((log_z - picked).mean())


def compare(reference, candidate, text: np.ndarray, *, window_count: int = 16, window_length: int = 128,
            prompt_count: int = 8, prompt_length: int = 32, new_tokens: int = 32) -> TextQuality:
    """``candidate`` against ``reference`` (ONNX Runtime sessions of decoder exports) on ``text`` (token ids)."""
    ids = windows(text, window_count, window_length + 1)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    ref_logits, cand_logits = window_logits(reference, inputs), window_logits(candidate, inputs)
    agreement = float((ref_logits.argmax(-1) == cand_logits.argmax(-1)).mean())
    prompts = windows(text[window_length // 2 :], prompt_count, prompt_length)  # starts between the windows'
    ref_tokens = generate_onnx(reference, prompts, None, new_tokens)
    cand_tokens = generate_onnx(candidate, prompts, None, new_tokens)
    gaps = []
    for row in np.nonzero((ref_tokens != cand_tokens).any(axis=1))[0]:
        step = int(np.argmax(ref_tokens[row] != cand_tokens[row]))
        prefix = np.concatenate([prompts[row], ref_tokens[row, :step]])[None]
        top_two = np.sort(window_logits(reference, prefix)[0, -1])[-2:]
        gaps.append(float(top_two[1] - top_two[0]))
    return TextQuality(
        positions=int(targets.size),
        top1_agreement=agreement,
        perplexity=float(np.exp(_nll(cand_logits, targets))),
        reference_perplexity=float(np.exp(_nll(ref_logits, targets))),
        generation_rows=prompt_count,
        generation_rows_identical=int((ref_tokens == cand_tokens).all(axis=1).sum()),
        generation_token_agreement=float((ref_tokens == cand_tokens).mean()),
        divergence_gaps=tuple(gaps),
        logit_difference_std=float(np.std(cand_logits.astype(np.float64) - ref_logits)),
    )
