"""Beam search and greedy search in numpy, token for token what transformers 5.23's ``generate`` returns.

Encoder-decoder generation run by ONNX Runtime needs a decoding loop that is not torch: this
module is that loop. The model is a callback, ``step(tokens, beam_origin) -> logits``, so the
caller keeps its own cache (ONNX Runtime values, IO binding) and this module only chooses
tokens. It reproduces ``model.generate(num_beams=N, do_sample=False)`` with no logits
processors (no forced BOS/EOS, no n-gram blocking, no min length): the same candidates, the
same float32 arithmetic for scores, length penalty and the ``-1e9`` masks, the same stopping
rules and the same output layout. How that layout looks:

* HF's ``sequences`` start with the decoder start token; the arrays returned here do not.
* Beam search returns, per batch row, the best finished hypothesis, padded on the right to
  the longest of those rows. So the output is shorter than ``max_new_tokens`` when beam search
  stops early (all rows done). The pad value is HF's: ``pad_token_id``, EXCEPT when
  ``pad_token_id == 0`` and there is an EOS token, where HF pads with ``eos_token_id`` (it
  picks the fill value with ``pad_token_id or eos_token_id``, a truthiness test; T5 has pad 0).
* Greedy search pads finished rows with ``pad_token_id`` (always, 0 included) and stops when
  every row has emitted EOS, so its output too may be shorter than ``max_new_tokens``.
* ``num_beams == 1`` is greedy search, as in ``generate``.

Where exact agreement depends on floating point: the scores are float32 like HF's, and a
row's log-softmax is ``(x - max) - logsumexp`` in float32, HF's (torch's CPU kernel's) order
of operations. Torch sums the exponentials with SIMD lanes, so its ``logsumexp`` can differ
from the one here by a few float32 ulps; that is one constant per beam, so it never reorders
a beam's own tokens and can only flip candidates of different beams whose scores lie within
about 1e-6 of each other. Exact ties between candidates are broken toward the lower flat
index (beam-major, then token id); torch's ``topk`` leaves that order unspecified, so exact
ties (in practice only a vocabulary smaller than 2 * num_beams) may resolve differently.

Only numpy is imported: ONNX Runtime loops use this without torch installed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

StepFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]

# HF's mask for "this candidate may not be chosen": added (in float32) rather than set, so
# masked scores keep their order among themselves, exactly as in transformers.
_MASK = np.float32(-1.0e9)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-softmax over the last axis in torch's order: ``(x - max) - log(sum(exp(x - max)))``."""
    x = np.asarray(logits).astype(np.float32, copy=False)
    shifted = x - x.max(axis=-1, keepdims=True)
    # The sum is done in float64 and rounded once: the closest float32 to the exact value,
    # which is what torch's float32 SIMD sum approximates (see the module docstring).
    lse = np.log(np.exp(shifted.astype(np.float64)).sum(axis=-1, keepdims=True)).astype(np.float32)
    return shifted - lse


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values of each row, largest first; ties go to the lower index.

    ``argpartition`` finds the k-th largest value, then only the values at or above it are
    sorted, so a step costs O(vocab) rather than a full sort of beams x vocab scores.
    """
    rows, width = scores.shape
    if k >= width:
        return np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    kth = np.partition(scores, width - k, axis=-1)[:, width - k]
    out = np.empty((rows, k), dtype=np.int64)
    for r in range(rows):
        cand = np.flatnonzero(scores[r] >= kth[r])
        out[r] = cand[np.argsort(-scores[r, cand], kind="stable")[:k]]
    return out


def _checked_logits(logits, rows: int) -> np.ndarray:
    """HF casts the last position's logits to float32 before anything else; so do we."""
    logits = np.asarray(logits)
    if logits.ndim == 3 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.ndim != 2 or logits.shape[0] != rows:
        raise ValueError(f"step must return logits of shape ({rows}, vocab), got {logits.shape}")
    return logits.astype(np.float32, copy=False)


def _check_common(batch_size: int, max_new_tokens: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:  # transformers rejects max_new_tokens <= 0 too
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def greedy_search(step: StepFn, batch_size: int, max_new_tokens: int, *, decoder_start_token_id: int,
                  eos_token_id: int | None, pad_token_id: int) -> np.ndarray:
    """Greedy decoding as ``generate(num_beams=1, do_sample=False)``: new tokens (batch_size, n) int64, n <= max_new_tokens.

    ``step`` is called with ``beam_origin=None`` every time (rows never move). The argmax is
    taken on the float32 raw logits (first index on ties, like torch). A row that has emitted
    EOS emits ``pad_token_id`` afterwards; the loop stops when every row has finished, so
    ``n`` is the step at which the last row emitted EOS, or ``max_new_tokens``. With no EOS
    token nothing finishes early and nothing is padded.
    """
    _check_common(batch_size, max_new_tokens)
    tokens = np.full((batch_size, 1), decoder_start_token_id, dtype=np.int64)
    unfinished = np.ones(batch_size, dtype=bool)
    out = []
    for _ in range(max_new_tokens):
        logits = _checked_logits(step(tokens, None), batch_size)
        nxt = logits.argmax(axis=-1).astype(np.int64)
        if eos_token_id is not None:
            nxt = np.where(unfinished, nxt, np.int64(pad_token_id))
            unfinished &= nxt != eos_token_id
        out.append(nxt)
        if not unfinished.any():
            break
        tokens = nxt[:, None]
    return np.stack(out, axis=1)


def beam_search(step: StepFn, batch_size: int, num_beams: int, max_new_tokens: int, *, decoder_start_token_id: int,
                eos_token_id: int | None, pad_token_id: int, length_penalty: float = 1.0,
                early_stopping: bool | str = False) -> np.ndarray:
    """Returns the new tokens (batch_size, n) int64 — WITHOUT the decoder start token — of the best hypothesis per
    batch row, padded on the right to the longest row (n <= max_new_tokens), as ``generate(num_beams=...)``.

    Padding is ``pad_token_id``, or ``eos_token_id`` when ``pad_token_id`` is 0 (HF's quirk, see
    the module docstring). ``step(tokens, beam_origin)``: ``tokens`` int64 (batch_size*num_beams, 1)
    is each beam's last token (``decoder_start_token_id`` on the first call); ``beam_origin`` is
    None on the first call, then int64 (batch_size*num_beams,): the previous row each new row
    continues, so the caller reorders its self-attention cache with ``past = past[beam_origin]``
    before running the step. Beams of batch item b are rows ``b*num_beams ... b*num_beams+num_beams-1``.
    It returns the last position's logits (batch_size*num_beams, vocab).

    HF semantics reproduced: ``2*num_beams`` candidates per item per step so that ``num_beams``
    beams stay alive even when the best ones end in EOS; a hypothesis that ends (EOS or
    ``max_new_tokens``) is scored ``sum_logprobs / length**length_penalty`` with length = its
    new tokens, EOS included, and enters the finished set only if it is among the top
    ``num_beams`` candidates of that step; ``early_stopping=True`` stops an item once
    ``num_beams`` hypotheses are finished, ``False`` once the best running beam, scored at its
    current length, cannot beat the worst finished one, ``"never"`` the same but (for
    ``length_penalty > 0``) scored at ``max_new_tokens``; generation stops when no item can
    improve, or (``early_stopping=True``) when every item is full, or at ``max_new_tokens``.
    """
    _check_common(batch_size, max_new_tokens)
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if isinstance(early_stopping, np.bool_):
        early_stopping = bool(early_stopping)  # HF tests `early_stopping is True`, which a numpy bool fails
    never = isinstance(early_stopping, str) and early_stopping == "never"
    if not (isinstance(early_stopping, bool) or never):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if num_beams == 1:  # generate() runs greedy search for one beam, not a one-beam beam search
        return greedy_search(step, batch_size, max_new_tokens, decoder_start_token_id=decoder_start_token_id,
                             eos_token_id=eos_token_id, pad_token_id=pad_token_id)

    stop_when_full = early_stopping is True
    lp = float(length_penalty)
    B, N, T = batch_size, num_beams, max_new_tokens
    K = 2 * N  # one EOS token at most: HF keeps max(2, 1 + n_eos) * num_beams candidates
    fill = -1 if eos_token_id is None else (pad_token_id or eos_token_id)  # HF's fill value, quirk included
    rows = np.arange(B)[:, None]

    # Running beams: tokens so far (fill beyond), accumulated float32 log-probs. Only beam 0 of
    # each item starts live (-1e9 for the others) so the first step does not pick N copies.
    run_seq = np.full((B, N, T), fill, dtype=np.int64)
    run_score = np.zeros((B, N), dtype=np.float32)
    run_score[:, 1:] = _MASK
    # Finished hypotheses: the N best so far per item, best first; placeholders score -1e9.
    fin_seq = np.full((B, N, T), fill, dtype=np.int64)
    fin_len = np.zeros((B, N), dtype=np.int64)
    fin_score = np.full((B, N), _MASK, dtype=np.float32)
    fin_done = np.zeros((B, N), dtype=bool)
    can_improve = np.ones(B, dtype=bool)  # HF's is_early_stop_heuristic_unsatisfied; once False, stays False
    top_n = np.arange(K) < N

    tokens = np.full((B * N, 1), decoder_start_token_id, dtype=np.int64)
    origin = None
    for g in range(T):  # g: index of the token chosen in this step; g + 1 new tokens after it
        logp = _log_softmax(_checked_logits(step(tokens, origin), B * N))
        vocab = logp.shape[-1]
        acc = (logp.reshape(B, N, vocab) + run_score[:, :, None]).reshape(B, N * vocab)

        # Top-2N continuations over all beams of an item.
        cand = _topk(acc, K)
        cand_score = np.take_along_axis(acc, cand, axis=-1)
        cand_beam = cand // vocab
        cand_tok = cand % vocab
        cand_seq = run_seq[rows, cand_beam]  # (B, K, T), a copy
        cand_seq[:, :, g] = cand_tok
        ends = np.zeros((B, K), dtype=bool) if eos_token_id is None else cand_tok == eos_token_id
        if g + 1 >= T:
            ends[:] = True

        # Next running beams: the best N candidates that did not end.
        masked = cand_score + ends.astype(np.float32) * _MASK
        keep = _topk(masked, N)
        run_seq = cand_seq[rows, keep]
        run_score = np.take_along_axis(masked, keep, axis=-1)
        origin = (np.take_along_axis(cand_beam, keep, axis=-1) + rows * N).reshape(-1)

        # Finished set: candidates among the top N that ended, length-penalised, merged with the
        # old set; masked ones (not ended, item full or unable to improve) cannot displace it.
        just_done = ends & top_n
        new_score = cand_score / np.float32(float(g + 1) ** lp)
        full = fin_done.all(axis=-1, keepdims=True) & stop_when_full
        new_score += full.astype(np.float32) * _MASK
        new_score += (~can_improve[:, None]).astype(np.float32) * _MASK
        new_score += (~just_done).astype(np.float32) * _MASK
        m_score = np.concatenate([fin_score, new_score], axis=1)
        best = _topk(m_score, N)
        fin_seq = np.concatenate([fin_seq, cand_seq], axis=1)[rows, best]
        fin_len = np.concatenate([fin_len, np.full((B, K), g + 1, dtype=np.int64)], axis=1)[rows, best]
        fin_done = np.concatenate([fin_done, just_done], axis=1)[rows, best]
        fin_score = np.take_along_axis(m_score, best, axis=-1)

        # Can an item still improve? Its best running beam, scored at the length the
        # early_stopping mode assumes, against the worst finished hypothesis of each slot.
        hypo_len = T if (never and lp > 0.0) else g + 1
        best_running = run_score[:, :1] / np.float32(float(hypo_len) ** lp)
        worst = np.where(fin_done, fin_score.min(axis=-1, keepdims=True), _MASK)
        can_improve &= (best_running > worst).any(axis=-1)

        if not can_improve.any() or (fin_done.all() and stop_when_full) or ends.all():
            break
        tokens = run_seq[:, :, g].reshape(B * N, 1)

    n = int(fin_len[:, 0].max())
    return np.ascontiguousarray(fin_seq[:, 0, :n])
