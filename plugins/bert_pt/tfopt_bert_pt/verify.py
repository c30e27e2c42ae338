"""The ``verify`` hook: the ONNX model against the PyTorch model it came from, on valid positions."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from tfopt.bench import ort_session
from tfopt.feeds import session_feed
from tfopt.results import ExportResult, RunContext, VerifyResult
from tfopt.verify import INT8_POOLED_MIN_COSINE, compare_cases, pooled_agreement, pooled_problem

from .cache import source_model


def torch_hidden_states(model: PreTrainedModel, feed: dict[str, np.ndarray]) -> np.ndarray:
    """last_hidden_state of the PyTorch model for one feed (ids as int64, as torch embeddings want)."""
    tensors = {name: torch.from_numpy(np.asarray(value, dtype=np.int64)) for name, value in feed.items()}
    with torch.inference_mode():
        return model(**tensors).last_hidden_state.float().numpy()


def verify_model(
    ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]
) -> VerifyResult:
    """Compare last_hidden_state per feed; padded positions are skipped (their values mean nothing)."""
    start = time.perf_counter()
    source = source_model(ctx)
    session = ort_session(model_path)
    output_name = session.get_outputs()[0].name
    ctx.progress(f"verifying {Path(model_path).name} against torch on {len(inputs)} input shapes ...")
    references, actuals, valids, labels = [], [], [], []
    for feed in inputs:
        references.append(torch_hidden_states(source.model, feed))
        actuals.append(session.run([output_name], session_feed(session, feed))[0])
        valids.append(feed["attention_mask"])
        batch_size, sequence_length = feed["input_ids"].shape
        labels.append({"batch_size": int(batch_size), "sequence_length": int(sequence_length)})
    result = compare_cases(
        references,
        actuals,
        valids=valids,
        labels=labels,
        reference_name="torch",
        precision=ctx.option("precision", "fp32"),
        tolerance=ctx.option("tolerance"),
    )
    if result.precision == "int8" and ctx.option("tolerance") is None:
        _judge_int8(ctx, result, references, actuals, valids)
    result.seconds = time.perf_counter() - start
    return result


def _judge_int8(ctx: RunContext, result, references, actuals, valids) -> None:
    """int8 moves every hidden value a little (max abs ~1 on all-MiniLM-L6-v2 is normal): pass/fail
    on the mean-pooled embeddings instead (tfopt.verify.pooled_agreement, docs/qat.md);
    ``--option tolerance=X`` brings back the max-abs judgement."""
    agreement = pooled_agreement(references, actuals, valids)
    problem = pooled_problem(agreement)
    result.passed = problem is None and result.overall.nan_count == 0
    result.tolerance = INT8_POOLED_MIN_COSINE
    result.top1_agreement = agreement["top1_agreement"]
    result.reference = "torch (int8: mean-pooled embeddings, min cosine and rank correlation)"
    result.cases.append({"criterion": "pooled embeddings", **agreement})
    if problem:
        result.failure = problem
    elif result.overall.nan_count:
        result.failure = f"{result.overall.nan_count} NaN in the int8 model's outputs"
