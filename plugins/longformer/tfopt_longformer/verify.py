"""The ``verify`` hook: the ONNX model against Hugging Face's eager LongformerModel, on valid positions.

A CUDA-target model (``com.microsoft::LongformerAttention``) has no CPU kernel in ONNX Runtime.
It is checked by another route: the same file with each contrib node computed by the
standard-op body (:func:`.onnx_attention.to_function`, itself checked against HF), so the
graph, the packed weights, the attributes and the padding around the nodes all run as written;
ONNX Runtime's CUDA kernel itself is not run. The result says so in ``reference``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from tfopt.bench import ort_session
from tfopt.feeds import session_feed
from tfopt.results import ExportResult, RunContext, VerifyResult
from tfopt.verify import compare_cases

from .cache import source_model
from .onnx_attention import MS_DOMAIN, to_function

TORCH = "torch"
STAND_IN = "torch (CUDA-target graph run on the CPU, LongformerAttention nodes computed by the standard-op body)"


def hf_hidden_states(model, feed: dict[str, np.ndarray]) -> np.ndarray:
    tensors = {name: torch.from_numpy(np.asarray(value, dtype=np.int64)) for name, value in feed.items()}
    with torch.inference_mode():
        return model(**tensors).last_hidden_state.float().numpy()


def has_contrib_attention(path: Path) -> bool:
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.domain == MS_DOMAIN and n.op_type == "LongformerAttention" for n in graph.node)


@contextlib.contextmanager
def runnable(path: Path):
    """``path`` itself, or a stand-in beside it (same external data) for a CUDA-target model."""
    if not has_contrib_attention(path):
        yield path, TORCH
        return
    proto = onnx.load(str(path), load_external_data=False)
    to_function(proto)
    handle, name = tempfile.mkstemp(prefix=".standin-", suffix=".onnx", dir=path.parent)
    os.close(handle)
    try:
        onnx.save(proto, name)
        yield Path(name), STAND_IN
    finally:
        Path(name).unlink(missing_ok=True)


def verify_model(ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list[dict[str, np.ndarray]]) -> VerifyResult:
    start = time.perf_counter()
    source = source_model(ctx)
    with runnable(Path(model_path)) as (path, reference):
        session = ort_session(path)
        output_name = session.get_outputs()[0].name
        ctx.progress(f"verifying {Path(model_path).name} against HF eager torch on {len(inputs)} input shapes ...")
        references, actuals, valids, labels = [], [], [], []
        for feed in inputs:
            references.append(hf_hidden_states(source.model, feed))
            actuals.append(session.run([output_name], session_feed(session, feed))[0])
            valids.append(feed["attention_mask"])
            batch, sequence = feed["input_ids"].shape
            labels.append({"batch_size": int(batch), "sequence_length": int(sequence),
                           "global_tokens": int(np.asarray(feed["global_attention_mask"]).sum())})
    result = compare_cases(
        references, actuals, valids=valids, labels=labels, reference_name=reference,
        precision=ctx.option("precision", "fp32"), tolerance=ctx.option("tolerance"),
    )
    result.seconds = time.perf_counter() - start
    return result
