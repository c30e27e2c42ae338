"""The ``verify`` hook: the ONNX model against the in-memory PyTorch model it came from.

Two checks, both must pass:

- raw parity: every output (text_embeds, image_embeds, logits_per_image) of every case, max abs
  diff within the precision's tolerance (fp32 1e-4; ``tfopt.verify.TOLERANCES``); one case per
  (feed, output), labelled ``output``.
- image-text similarity: per case, the least cosine similarity between ORT's and torch's rows of
  text_embeds and image_embeds (``min_cosine`` in the case), and whether each image picks the same
  caption (argmax of its logits_per_image row; ``argmax_agreement``). ``VerifyResult.top1_agreement``
  is the agreement over all images; it fails below 1.0, or when a cosine is below ``min_cosine``
  (fp32 0.9999, fp16 0.999, int8/int4 0.99; ``--min-cosine`` overrides).

The feeds' rows are all valid outputs (the text tower pools at the end of text), so no mask applies.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from tfopt.bench import ort_session
from tfopt.feeds import session_feed
from tfopt.results import ExportResult, RunContext, VerifyResult
from tfopt.verify import compare_cases

from .cache import source_model
from .export import OUTPUT_NAMES

MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99, "int4": 0.99}


def torch_outputs(model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in feed.items()}
    with torch.inference_mode():
        out = model(**tensors)
    return [getattr(out, name).float().numpy() for name in OUTPUT_NAMES]


def row_cosines(reference: np.ndarray, actual: np.ndarray) -> np.ndarray:
    reference, actual = np.asarray(reference, np.float64), np.asarray(actual, np.float64)
    norms = np.linalg.norm(reference, axis=-1) * np.linalg.norm(actual, axis=-1)
    return np.sum(reference * actual, axis=-1) / np.maximum(norms, 1e-30)


def similarity(reference: list[np.ndarray], actual: list[np.ndarray]) -> dict:
    """Least row cosine over both embeddings, and the images that pick the same caption."""
    cosines = np.concatenate([row_cosines(reference[i], actual[i]) for i in (0, 1)])
    picks = np.argmax(reference[2], axis=-1) == np.argmax(actual[2], axis=-1)
    return {"min_cosine": float(np.min(cosines)), "argmax_agreement": float(np.mean(picks)), "images": int(picks.size),
            "same_picks": int(np.sum(picks))}


def verify_model(ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]) -> VerifyResult:
    start = time.perf_counter()
    source = source_model(ctx)
    precision = ctx.option("precision", "fp32")
    session = ort_session(model_path)
    ctx.progress(f"verifying {Path(model_path).name} against torch on {len(inputs)} text/image batches ...")
    references, actuals, labels, shared = [], [], [], []
    for feed in inputs:
        expected = torch_outputs(source.model, feed)
        got = session.run(list(OUTPUT_NAMES), session_feed(session, feed))
        shape = {
            "batch_size": int(feed["input_ids"].shape[0]),
            "image_batch": int(feed["pixel_values"].shape[0]),
            "sequence_length": int(feed["input_ids"].shape[1]),
        }
        close = similarity(expected, got)
        shared.append(close)
        for name, reference, actual in zip(OUTPUT_NAMES, expected, got):
            references.append(reference)
            actuals.append(actual)
            labels.append({**shape, "output": name, **close})
    result = compare_cases(
        references, actuals, labels=labels, reference_name="torch", precision=precision, tolerance=ctx.option("tolerance")
    )
    least = float(ctx.option("min_cosine", MIN_COSINE.get(precision, 0.99)))
    min_cosine = min(case["min_cosine"] for case in shared)
    result.top1_agreement = sum(case["same_picks"] for case in shared) / max(1, sum(case["images"] for case in shared))
    problems = []
    if min_cosine < least:
        problems.append(f"embedding cosine similarity {min_cosine:.6f} < {least}")
    if result.top1_agreement < 1.0:
        problems.append(f"images picked a different caption than torch's ({result.top1_agreement:.2%} agree)")
    if problems:
        result.passed = False
        result.failure = "; ".join(problems)
    ctx.progress(f"image-text similarity: min cosine {min_cosine:.7f}, caption picks agree {result.top1_agreement:.0%}")
    result.seconds = time.perf_counter() - start
    return result
