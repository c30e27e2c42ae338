"""T5-architecture models trained here to restore masked bytes of the standard library's docstrings.

Random weights say nothing about generation (flat logits: beam search and greedy agree by
accident or not at all), and no weights can be downloaded here, so generation is judged on
these. Byte-level (id = byte + 3; 0 pad and decoder start, 1 end, 2 the mask sentinel); the
task is denoising, as BART and T5 are pre-trained: the source is a window of docstring text
with 15% of its bytes replaced by the sentinel, the target is the whole window and the end
token. The model copies what it sees through cross-attention and fills the holes from what
it learned of English and Python, so its outputs have structure (a span it cannot restore is
where beam search and greedy part). ``stdlib-t5`` trains in a few minutes once (cached by
:mod:`tfopt.textmodel`), ``stdlib-t5-tiny`` in seconds, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from tfopt import textmodel
from tfopt.errors import TfoptError

PAD, EOS, SENTINEL, OFFSET = 0, 1, 2, 3
MASKED = 0.15  # share of the source's bytes replaced by the sentinel


@dataclass(frozen=True)
class TextModelSpec:
    layers: int
    width: int
    heads: int
    feed_forward: int
    budget: textmodel.TrainingBudget  # sequence_length: the source window


TEXT_MODELS = {
    # ~1.2M parameters, a few minutes on the development machine
    "stdlib-t5": TextModelSpec(3, 128, 4, 384, textmodel.TrainingBudget(steps=3000, batch_size=32, sequence_length=32)),
    # for tests: ~40 s; copies the text and fills ~30% of the holes (900 steps: it copies nothing yet)
    "stdlib-t5-tiny": TextModelSpec(2, 64, 4, 192, textmodel.TrainingBudget(steps=1500, batch_size=32, sequence_length=32)),
}


def config_for(spec: TextModelSpec):
    from transformers import T5Config

    return T5Config(vocab_size=256 + OFFSET, d_model=spec.width, d_kv=spec.width // spec.heads, d_ff=spec.feed_forward,
                    num_layers=spec.layers, num_heads=spec.heads, relative_attention_num_buckets=16, dropout_rate=0.0,
                    pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, tie_word_embeddings=False)


def masked_example(window: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(source ids, target ids): ``window`` (bytes) with some bytes replaced by the sentinel; the window and the end token."""
    ids = np.asarray(window, dtype=np.int64) + OFFSET
    source = np.where(rng.random(len(ids)) < MASKED, SENTINEL, ids)
    return source, np.concatenate([ids, [EOS]])


def encode_text(text: str) -> np.ndarray:
    """Token ids of a text (bytes + 3), with the first occurrence of the marker ``<mask>`` as the sentinel."""
    before, marker, after = text.partition("<mask>")
    parts = [np.frombuffer(before.encode(), np.uint8).astype(np.int64) + OFFSET]
    if marker:
        parts += [np.array([SENTINEL]), np.frombuffer(after.encode(), np.uint8).astype(np.int64) + OFFSET]
    return np.concatenate(parts)


def decode_ids(ids) -> str:
    return bytes(int(i) - OFFSET for i in ids if int(i) >= OFFSET).decode("utf-8", errors="replace")


def denoising_batch(data, rng: np.random.Generator, budget: textmodel.TrainingBudget) -> dict:
    """A batch of restorations from random windows (sources right-padded; padded targets ignored by the loss)."""
    import torch

    starts = rng.integers(0, len(data) - budget.sequence_length - 1, size=budget.batch_size)
    examples = [masked_example(data[s : s + budget.sequence_length].numpy(), rng) for s in starts]
    sources = np.full((len(examples), max(len(s) for s, _ in examples)), PAD)
    targets = np.full((len(examples), max(len(t) for _, t in examples)), -100)
    for row, (source, target) in enumerate(examples):
        sources[row, : len(source)], targets[row, : len(target)] = source, target
    ids = torch.from_numpy(sources)
    return {"input_ids": ids, "attention_mask": (ids != PAD).long(), "labels": torch.from_numpy(targets)}


def heldout_sources(count: int, length: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """``count`` held-out restorations: right-padded sources, their mask, and each expected target."""
    text = textmodel.heldout_bytes()
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(text) - length - 1, size=count)
    examples = [masked_example(text[s : s + length], rng) for s in starts]
    sources = np.full((count, max(len(s) for s, _ in examples)), PAD, dtype=np.int64)
    for row, (source, _) in enumerate(examples):
        sources[row, : len(source)] = source
    return sources, (sources != PAD).astype(np.int64), [target for _, target in examples]


def trained_model(name: str, *, attn_implementation: str | None = None, progress: Callable[[str], None] | None = None):
    """The trained T5ForConditionalGeneration ``name`` (a key of :data:`TEXT_MODELS`), from the cache or trained now."""
    from transformers import T5ForConditionalGeneration

    if name not in TEXT_MODELS:
        raise TfoptError(f"unknown text model {name!r}; known: {', '.join(TEXT_MODELS)}")
    spec = TEXT_MODELS[name]
    return textmodel.trained_model(name, "seq2seq", config_for(spec), T5ForConditionalGeneration, spec.budget,
                                   attn_implementation=attn_implementation or "eager", progress=progress, make_batch=denoising_batch)


def calibration(encoder_path, spec: TextModelSpec, *, windows: int = 64, seed: int = 7):
    """GPTQ's calibration for the decoder (:data:`tfopt.gptq.Calibration`): restorations of *training* text.

    Each feed is one teacher-forced decoder call (past 0) over 8 sources: the masked windows go
    through the fused encoder for their cross keys/values, the decoder reads the start token and
    the target: ``windows`` x 33 activation rows, more than any of the decoder's MatMuls has inputs.
    """
    from tfopt import encoder_decoder as names

    text = np.frombuffer(textmodel.corpus()[0], dtype=np.uint8).astype(np.int64)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(text) - spec.budget.sequence_length - 1, size=windows)
    examples = [masked_example(text[s : s + spec.budget.sequence_length], rng) for s in starts]

    def feeds(session):
        pair = names.EncoderDecoder(encoder_path, session, names.GenerationTokens(PAD, EOS, PAD))
        for first in range(0, windows, 8):
            chunk = examples[first : first + 8]
            sources = np.stack([source for source, _ in chunk])
            targets = np.stack([target for _, target in chunk])
            source = {names.INPUT_IDS: sources, names.ATTENTION_MASK: np.ones_like(sources)}
            cross, _ = pair.encode(source)
            tokens = np.concatenate([np.full((len(chunk), 1), PAD), targets[:, :-1]], axis=1)
            yield {names.INPUT_IDS: tokens, names.ENCODER_MASK: source[names.ATTENTION_MASK], **cross,
                   **pair.empty_self_past(len(chunk))}

    return feeds
