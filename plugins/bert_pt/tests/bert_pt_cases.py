"""Constants and helpers the bert_pt test files share (a unique module name: pytest puts this dir on sys.path)."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from tfopt.bench import ort_session
from tfopt.results import RunContext

TINY_MODELS = ("tiny-bert", "tiny-distilbert", "tiny-roberta", "tiny-albert")
EXPORTERS = ("dynamo", "legacy")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
VARIANTS = list(itertools.product(TINY_MODELS, EXPORTERS, ATTN_IMPLEMENTATIONS))
VARIANT_IDS = ["-".join(variant) for variant in VARIANTS]
FP32_TOLERANCE = 1e-4


def make_ctx(work_dir, source, **options) -> RunContext:
    return RunContext(family="bert_pt", source=source, work_dir=work_dir, options=options)


def max_valid_diff(source_model, model_path, feeds) -> float:
    """Worst |ORT - torch| over the valid (unpadded) positions of every feed."""
    session = ort_session(model_path)
    worst = 0.0
    for feed in feeds:
        tensors = {name: torch.from_numpy(value.astype(np.int64)) for name, value in feed.items()}
        with torch.inference_mode():
            expected = source_model.model(**tensors).last_hidden_state.numpy()
        ort_feed = {i.name: feed[i.name].astype(np.int32 if i.type == "tensor(int32)" else np.int64) for i in session.get_inputs()}
        (actual,) = session.run(None, ort_feed)
        assert actual.shape == expected.shape
        valid = feed["attention_mask"].astype(bool)
        assert np.isfinite(actual[valid]).all()
        worst = max(worst, float(np.abs(actual - expected)[valid].max()))
    return worst
