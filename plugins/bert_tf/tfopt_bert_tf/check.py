"""The verify stage: the ONNX model against the TF source on the same feeds, valid positions only.

Every float output both sides have is compared (last hidden state and pooled output):
a fusion that breaks only the pooler path would otherwise pass.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tfopt.bench import ort_session
from tfopt.errors import TfoptError
from tfopt.feeds import session_feed
from tfopt.results import RunContext, VerifyResult
from tfopt.verify import compare_cases

from .inputs import valid_mask
from .source import TfSource


def verify_against_source(ctx: RunContext, source: TfSource, model_path: Path, inputs: list[dict[str, np.ndarray]]) -> VerifyResult:
    """Run ``source`` (its tf.function) and ONNX Runtime on each feed; diff every float output."""
    start = time.perf_counter()
    session = ort_session(model_path)
    output_names = [o.name for o in session.get_outputs()]
    roles = source.roles()
    references, actuals, valids, labels = [], [], [], []
    for feed in inputs:
        expected = source.run(feed)
        got = dict(zip(output_names, session.run(None, session_feed(session, feed))))
        mask = valid_mask(feed, roles)
        compared = sorted(name for name, value in expected.items() if np.issubdtype(value.dtype, np.floating))
        lost = [name for name in compared if name not in got]
        if lost:  # an optimization that drops an output is broken, not "verified on fewer outputs"
            raise TfoptError(f"{model_path}: lacks output(s) {', '.join(lost)} of {source.name} (it has: {', '.join(output_names)})")
        for name in compared:
            references.append(expected[name])
            actuals.append(got[name])
            # (batch, seq, ...) outputs: padded positions carry no meaning; (batch, hidden) ones are all valid
            valids.append(mask if expected[name].ndim >= 3 else None)
            batch, sequence = np.asarray(feed[roles["ids"]]).shape
            labels.append({"output": name, "batch_size": batch, "sequence_length": sequence})
    if not references:
        raise TfoptError(f"{source.name}: no float output to compare")
    result = compare_cases(
        references, actuals, valids=valids, labels=labels,
        precision=ctx.option("precision", "fp32"), reference_name=source.reference, tolerance=ctx.option("tolerance"),
    )
    result.seconds = time.perf_counter() - start
    return result
