"""Generation driven by an ONNX decoding step (:mod:`tfopt.causal_lm`'s layout), and PyTorch's own for reference.

The ONNX loop is what a deployment runs: the prompt step with an empty past, then one
token per step feeding each step's ``present`` back as the next ``past``. Prompts are
padded on the LEFT, so every row's next token comes from the last position; position ids
count real tokens only. The reference is transformers' ``generate``, a separate
implementation of the same loop, so agreement checks the cache handling as well as the
numbers. In fp32 greedy tokens must be identical.

The loop runs with IO binding: each step's ``present`` outputs stay ONNX Runtime values
(OrtValue) bound as the next step's ``past`` inputs as they are, so the cache is never
copied into numpy and back. Only the logits are read.

Sampling (``do_sample=True``) draws from the last position's logits after temperature,
top-k and top-p filtering (transformers' order), with a numpy generator seeded by ``seed``:
the same seed gives the same tokens. Used by the gpt2 and llama adapters and
``tfopt generate``; torch and transformers are imported only by :func:`generate_torch`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .bench import ort_session
from .causal_lm import ATTENTION_MASK, INPUT_IDS, POSITION_IDS, position_ids_for
from .errors import TfoptError, first_line
from .feeds import session_feed, valid_lengths

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy (``do_sample=False``) or drawn after filtering."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    seed: int = 0

    def __post_init__(self):
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise TfoptError("sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0")


GREEDY = Sampling()


def checked_prompt(input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
    input_ids = np.asarray(input_ids, dtype=np.int64)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise TfoptError(f"input_ids must be (batch, prompt length) with at least one token, got shape {input_ids.shape}")
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    if mask.shape != input_ids.shape:
        raise TfoptError(f"attention_mask shape {mask.shape} differs from input_ids shape {input_ids.shape}")
    if not mask[:, -1].all():
        raise TfoptError("prompts must be padded on the left: every row's last attention_mask entry must be 1")
    return input_ids, mask


def left_padded(rows: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prompts of different lengths as one left-padded batch: (input_ids, attention_mask)."""
    if not rows or any(len(row) == 0 for row in rows):
        raise TfoptError("every prompt needs at least one token")
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        ids[index, width - len(row):] = row
        mask[index, width - len(row):] = 1
    return ids, mask


def empty_past(session, batch_size: int) -> dict[str, np.ndarray]:
    """A zero-length past for every ``past_key_values.{i}.key/value`` input the graph declares."""
    past = {}
    for spec in session.get_inputs():
        if not _PAST.match(spec.name):
            continue
        heads, head_size = spec.shape[1], spec.shape[3]
        if not isinstance(heads, int) or not isinstance(head_size, int):
            raise TfoptError(f"{spec.name}: the graph does not declare its head count and head size {spec.shape}")
        past[spec.name] = np.zeros((batch_size, heads, 0, head_size), dtype=_NUMPY_TYPES.get(spec.type, np.float32))
    if not past:
        raise TfoptError("the model has no past_key_values.{i}.key/value inputs; it is not a decoding-step export")
    return past


def _filtered_probabilities(logits: np.ndarray, sampling: Sampling) -> np.ndarray:
    """Softmax of ``logits / temperature`` over the tokens top-k and top-p keep (rows are batch entries)."""
    scores = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k and sampling.top_k < scores.shape[-1]:
        kth = np.sort(scores, axis=-1)[:, -sampling.top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probabilities = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    if sampling.top_p < 1.0:
        order = np.argsort(-probabilities, axis=-1)
        sorted_probabilities = np.take_along_axis(probabilities, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop_sorted = np.cumsum(sorted_probabilities, axis=-1) - sorted_probabilities >= sampling.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probabilities = np.where(drop, 0.0, probabilities)
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return probabilities


def next_tokens(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """One token per row from (batch, vocab) logits."""
    if not sampling.do_sample:
        return logits.argmax(-1).astype(np.int64)
    probabilities = _filtered_probabilities(logits, sampling)
    cumulative = np.cumsum(probabilities, axis=-1)
    draws = rng.random((logits.shape[0], 1))
    return np.minimum((cumulative < draws).sum(axis=-1), logits.shape[-1] - 1).astype(np.int64)


def generate_onnx(
    model_path, input_ids, attention_mask=None, max_new_tokens: int = 16, *,
    eos_token_id: int | None = None, sampling: Sampling = GREEDY,
) -> np.ndarray:
    """The ``max_new_tokens`` new tokens (batch, max_new_tokens) of the ONNX decoding step at ``model_path``.

    ``model_path`` may also be a loaded ``onnxruntime.InferenceSession``. Rows that emit
    ``eos_token_id`` keep emitting it (as transformers pads finished rows with it).
    """
    if hasattr(model_path, "get_inputs"):
        session, label = model_path, "the ONNX Runtime session"
    else:
        session, label = ort_session(model_path), str(model_path)
    output_names = [output.name for output in session.get_outputs()]
    if output_names[0] != "logits":
        raise TfoptError(f"{label}: generation needs a model whose first output is 'logits' (a causal LM with its head)")
    ids, mask = checked_prompt(input_ids, attention_mask)
    batch_size = ids.shape[0]
    past: dict = empty_past(session, batch_size)  # numpy for the first step, then OrtValues
    presents = {name: name.replace("past_key_values.", "present.", 1) for name in past}
    positions = position_ids_for(mask, ids.shape[1])
    finished = np.zeros(batch_size, dtype=bool)
    rng = np.random.default_rng(sampling.seed)
    new_tokens = []
    binding = session.io_binding()
    for _ in range(max_new_tokens):
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        feed = session_feed(session, {INPUT_IDS: ids, ATTENTION_MASK: mask, POSITION_IDS: positions, **past_placeholders(past)})
        for name, value in feed.items():
            if name in past and not isinstance(past[name], np.ndarray):
                binding.bind_ortvalue_input(name, past[name])  # last step's present, as ORT holds it
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in output_names:
            binding.bind_output(name, "cpu")  # ORT allocates; nothing is copied out unless read
        run_bound(session, binding, label)
        outputs = dict(zip(output_names, binding.get_outputs()))
        chosen = next_tokens(outputs["logits"].numpy()[:, -1, :], sampling, rng)
        if eos_token_id is not None:
            chosen = np.where(finished, eos_token_id, chosen)
            finished |= chosen == eos_token_id
        new_tokens.append(chosen)
        past = {name: outputs[present] for name, present in presents.items()}
        ids = chosen[:, None]
        mask = np.concatenate([mask, np.ones((batch_size, 1), dtype=mask.dtype)], axis=1)
        positions = mask.sum(axis=1, keepdims=True) - 1  # real tokens before the new one
    return np.stack(new_tokens, axis=1) if new_tokens else np.zeros((batch_size, 0), dtype=np.int64)


def past_placeholders(past: dict) -> dict:
    """``past`` for :func:`tfopt.feeds.session_feed`'s name check: OrtValues stand in as empty arrays (never cast)."""
    return {name: value if isinstance(value, np.ndarray) else np.empty(0, np.float32) for name, value in past.items()}


def run_bound(session, binding, label) -> None:
    """``session.run_with_iobinding`` with a one-line error naming the model."""
    try:
        session.run_with_iobinding(binding)
    except Exception as exc:
        raise TfoptError(f"{label}: ONNX Runtime failed to run it ({first_line(exc)})") from None


def generate_torch(model, input_ids, attention_mask=None, max_new_tokens: int = 16, *, eos_token_id: int | None = None) -> np.ndarray:
    """transformers' greedy ``generate`` for the same prompts; the new tokens only, (batch, max_new_tokens).

    With ``eos_token_id`` None generation never stops early (the model config's EOS is
    ignored), so both sides always produce ``max_new_tokens`` tokens.
    """
    import torch
    from transformers import GenerationConfig

    if not hasattr(model, "generate") or model.get_output_embeddings() is None:
        raise TfoptError("greedy generation needs a causal LM with its head (this model has no LM head)")
    ids, mask = checked_prompt(input_ids, attention_mask)
    if max_new_tokens <= 0:
        return np.zeros((ids.shape[0], 0), dtype=np.int64)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id if eos_token_id is not None else 0,
    )
    with torch.inference_mode():
        output = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), generation_config=config)
    new = output[:, ids.shape[1] :].numpy()
    if new.shape[1] < max_new_tokens:  # all rows hit EOS early: pad like the ONNX loop does
        new = np.concatenate([new, np.full((ids.shape[0], max_new_tokens - new.shape[1]), eos_token_id)], axis=1)
    return new


def example_prompts(vocab_size: int, batch_size: int, prompt_length: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random prompts, left-padded to ``prompt_length``: row i has ``i * L // B`` pad slots (B=4, L=8: 0, 2, 4, 6)."""
    rng = np.random.default_rng(seed)
    lengths = valid_lengths(batch_size, prompt_length)
    mask = (np.arange(prompt_length)[None, :] >= (prompt_length - lengths)[:, None]).astype(np.int64)
    ids = rng.integers(0, vocab_size, size=(batch_size, prompt_length))
    return np.where(mask.astype(bool), ids, 0).astype(np.int64), mask
