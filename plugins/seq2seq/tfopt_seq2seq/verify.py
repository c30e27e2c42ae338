"""The ``verify`` hook: both graphs against PyTorch, then generation against transformers' ``generate``.

1. The encoder on padded sources: its hidden states and every layer's cross keys/values,
   on real source positions.
2. The decoder on decoding steps (``make_dummy_inputs``): the first step (past 0) and later
   ones with one or several new tokens, over padded sources; logits and the grown
   self-attention cache, all positions (a decoder is never padded: every row advances together).
3. Generation: the two ONNX graphs driven by :class:`tfopt.encoder_decoder.EncoderDecoder`,
   greedy and beam search (4 beams), against ``model.generate`` with the same settings:
   in fp32 the tokens must be identical. For the models trained here the sources are held-out
   text; below fp32 the share of identical tokens is reported and judged instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tfopt import encoder_decoder as names
from tfopt.bench import ort_session
from tfopt.results import ExportResult, RunContext, VerifyResult
from tfopt.verify import diff_stats, merge_stats, run_tolerance

from . import step as steps
from .export import ENCODER_OUTPUTS
from .generate import generate_torch
from .models import SourceModel
from .source import source_model
from .textmodel import TEXT_MODELS, heldout_sources

# (batch, source length, past, new tokens); Whisper's source length is fixed by its position table
DECODER_CASES = ((1, 6, 0, 1), (3, 9, 0, 1), (2, 7, 5, 1), (4, 11, 9, 1), (3, 8, 4, 3), (2, 5, 16, 2))
ENCODER_CASES = ((1, 7), (3, 12))
GENERATION = dict(batch=3, length=10, max_new_tokens=32, beams=(1, 4))
# Max abs difference of encoder outputs and decoder logits. Below fp32 the logits move by design
# (int4 more than int8): what decides there is the share of generated tokens torch also generates.
TOLERANCES = {"fp32": 1e-4, "fp16": 0.2, "int8": 3.0, "int4": 8.0}
# Below fp32, on the model trained here: next-token agreement with torch along torch's own greedy output
MIN_TOP1 = {"fp16": 0.95, "int8": 0.95, "int4": 0.90}


def dummy_inputs(ctx: RunContext, exported: ExportResult) -> list[dict[str, np.ndarray]]:
    """Decoding steps over padded random sources, the cross keys/values computed by torch's encoder."""
    source = source_model(ctx)
    rng = np.random.default_rng(int(ctx.option("seed", 0)))
    encoder = steps.encoder_step(source)
    feeds = []
    for batch, length, past, new in DECODER_CASES:
        encoded = steps.encoder_feed(source, batch, length, rng)
        cross = steps.run_torch(encoder, steps.encoder_inputs(source), encoded)[1:]
        feeds.append(steps.decoder_feed(source, encoded, cross, past, new, rng))
    return feeds


def _encoder_stats(source: SourceModel, session, seed: int):
    module = steps.encoder_step(source)
    rng, stats, cases = np.random.default_rng(seed + 1), [], []
    for batch, length in ENCODER_CASES:
        feed = steps.encoder_feed(source, batch, length, rng)
        expected = steps.run_torch(module, steps.encoder_inputs(source), feed)
        actual = session.run(steps.encoder_outputs(source), feed)
        real = None if source.spec.audio else feed[names.ATTENTION_MASK].astype(bool)
        parts = [diff_stats(expected[0], actual[0], real)]  # hidden: [batch, source, width]
        for want, got in zip(expected[1:], actual[1:]):  # cross: [batch, heads, source, head_size]
            parts.append(diff_stats(want.transpose(0, 2, 1, 3), got.transpose(0, 2, 1, 3), real))
        stats.append(merge_stats(parts))
        cases.append({"graph": "encoder", "batch_size": batch, "source_length": feed[steps.encoder_inputs(source)[0]].shape[-1],
                      "diff": stats[-1]})
    return stats, cases


def generation_sources(source: SourceModel, seed: int) -> dict[str, np.ndarray]:
    """Held-out text for the models trained here; padded random tokens (or random features) otherwise."""
    if source.name in TEXT_MODELS:
        ids, mask, _ = heldout_sources(GENERATION["batch"], TEXT_MODELS[source.name].budget.sequence_length, seed=seed)
        return {names.INPUT_IDS: ids, names.ATTENTION_MASK: mask}
    return steps.encoder_feed(source, GENERATION["batch"], GENERATION["length"], np.random.default_rng(seed + 2))


def same_tokens(expected: np.ndarray, actual: np.ndarray) -> float:
    """Share of positions where both sequences hold the same token (the shorter padded with -1)."""
    width = max(expected.shape[1], actual.shape[1])
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1)  # noqa: E731
    return float((pad(expected) == pad(actual)).mean()) if width else 1.0


def verify_model(ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]) -> VerifyResult:
    precision, tolerance = run_tolerance(ctx, TOLERANCES)
    source = source_model(ctx)
    seed = int(ctx.option("seed", 0))
    start = time.perf_counter()
    encoder_path = Path((ctx.results.get("extra_outputs") or {}).get(ENCODER_OUTPUTS["final"]) or
                        (ctx.results.get("extra_outputs") or {})[ENCODER_OUTPUTS["export"]])
    encoder_session, session = ort_session(encoder_path), ort_session(model_path)  # each loaded once: parity, then generation
    stats, cases = _encoder_stats(source, encoder_session, seed)
    module = steps.decoder_step(source)
    for feed in inputs:
        expected = steps.run_torch(module, steps.decoder_inputs(source), feed)
        actual = session.run(steps.decoder_outputs(source), feed)
        stats.append(merge_stats([diff_stats(want, got) for want, got in zip(expected, actual)]))
        batch, new = feed[names.INPUT_IDS].shape
        past = feed[names.self_past_names(source.decoder_layers)[0]].shape[2]
        cases.append({"graph": "decoder", "batch_size": batch, "past_length": past, "sequence_length": new, "diff": stats[-1]})
    overall = merge_stats(stats)
    failure, notes = None, _encoder_validation(ctx)
    pair = names.EncoderDecoder(encoder_session, session)
    sources = generation_sources(source, seed)
    worst_same, greedy = 1.0, None
    for beams in GENERATION["beams"]:
        search = "greedy" if beams == 1 else f"beam-{beams}"
        want = generate_torch(source, sources, GENERATION["max_new_tokens"], num_beams=beams)
        got = pair.generate(sources, GENERATION["max_new_tokens"], num_beams=beams)
        same = same_tokens(want, got)
        worst_same, greedy = min(worst_same, same), want if beams == 1 else greedy
        cases.append({"generation": search, "batch_size": want.shape[0], "new_tokens": int(want.shape[1]),
                      "identical": bool(same == 1.0), "same_tokens": same})
        verdict = "identical to" if same == 1.0 else f"{same:.1%} the same as"
        notes.append(f"{search} generation ({want.shape[0]} sources, up to {GENERATION['max_new_tokens']} tokens): "
                     f"{verdict} transformers' generate")
        if precision == "fp32" and same < 1.0 and failure is None:
            failure = f"{search} tokens differ from transformers' generate ({same:.1%} the same)"
    agreement = None
    if precision != "fp32":
        agreement, positions = teacher_forced_agreement(source, pair, sources, greedy)
        notes.append(f"next-token agreement with torch along its greedy output: {agreement:.1%} of {positions} positions")
        if source.name in TEXT_MODELS and agreement < MIN_TOP1[precision]:
            failure = f"next-token agreement with torch {agreement:.1%} < {MIN_TOP1[precision]:.0%} ({precision}; {positions} positions)"
    return VerifyResult(
        passed=overall.max_abs <= tolerance and overall.nan_count == 0 and failure is None, tolerance=tolerance,
        precision=precision, reference="torch", overall=overall, cases=cases, top1_agreement=agreement,
        seconds=time.perf_counter() - start, failure=failure, notes=notes,
    )


def teacher_forced_agreement(source: SourceModel, pair: names.EncoderDecoder, sources: dict[str, np.ndarray],
                             greedy: np.ndarray) -> tuple[float, int]:
    """Share of positions where the ONNX decoder's next token is torch's, both reading torch's greedy output.

    One decoder call per side over the whole output (past 0): every position is judged on the
    same history, so one early difference does not shift every later token (as comparing two
    generated sequences would). Positions after a row's first EOS are left out.
    """
    cross, _ = pair.encode(sources)
    start = np.full((greedy.shape[0], 1), source.decoder_start_token_id, dtype=np.int64)
    tokens = np.concatenate([start, greedy[:, :-1]], axis=1)
    feed = {names.INPUT_IDS: tokens, **cross, **pair.empty_self_past(tokens.shape[0])}
    if source.spec.encoder_mask:
        feed[names.ENCODER_MASK] = sources[names.ATTENTION_MASK]
    actual = pair.decoder.run([names.LOGITS], feed)[0]
    expected = steps.run_torch(steps.decoder_step(source), steps.decoder_inputs(source), feed)[0]
    ended = np.cumsum(greedy == source.eos_token_id, axis=1) - (greedy == source.eos_token_id) > 0
    keep = ~ended
    return float((actual.argmax(-1) == expected.argmax(-1))[keep].mean()), int(keep.sum())


def _encoder_validation(ctx: RunContext) -> list[str]:
    """The fused encoder's validation line (the report's own line is the decoder's)."""
    from tfopt.graph.validate import validation_line

    fused = ctx.results.get("encoder_fuse")
    if fused is None or fused.validation is None:
        return []
    return [f"{Path(fused.model_path).name}: {validation_line(fused.validation)}"]
