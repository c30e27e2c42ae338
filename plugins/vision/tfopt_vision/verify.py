"""The ``verify`` hook: the ONNX model against the in-memory PyTorch model it came from.

fp32 parity is max abs diff <= 1e-4 on last_hidden_state; the other precisions take
``tfopt.verify.TOLERANCES`` (fp16 2e-2, int8/int4 0.5) unless ``--option tolerance=X``.
The converted models keep fp32 inputs and outputs (the host's convert_precision), so the
feeds are the same for every precision.
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
from .export import INPUT_NAME, OUTPUT_NAME


def torch_hidden_states(model, pixel_values: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(pixel_values=torch.from_numpy(np.asarray(pixel_values, np.float32))).last_hidden_state.float().numpy()


def verify_model(ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]) -> VerifyResult:
    start = time.perf_counter()
    source = source_model(ctx)
    session = ort_session(model_path)
    names = [output.name for output in session.get_outputs()]
    output_name = OUTPUT_NAME if OUTPUT_NAME in names else names[0]
    ctx.progress(f"verifying {Path(model_path).name} against torch on {len(inputs)} batch sizes ...")
    references, actuals, labels = [], [], []
    for feed in inputs:
        references.append(torch_hidden_states(source.model, feed[INPUT_NAME]))
        actuals.append(session.run([output_name], session_feed(session, feed))[0])
        labels.append({"batch_size": int(feed[INPUT_NAME].shape[0])})
    result = compare_cases(
        references, actuals, labels=labels, reference_name="torch",
        precision=ctx.option("precision", "fp32"), tolerance=ctx.option("tolerance"),
    )
    result.seconds = time.perf_counter() - start
    return result
