"""Task metrics on the held-out split, for torch models and ONNX files alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EVAL_BATCH = 64


def eval_batches(prepared, batch_size: int = EVAL_BATCH):
    """Tokenized held-out batches (numpy int64), in a fixed order."""
    from .train import tokenize

    texts = prepared.dataset.eval_texts
    for start in range(0, len(texts), batch_size):
        encoded = tokenize(prepared.tokenizer, texts[start:start + batch_size], prepared.config.max_length)
        yield {name: tensor.numpy().astype(np.int64) for name, tensor in encoded.items()}


def torch_logits(model: torch.nn.Module, prepared) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for feed in eval_batches(prepared):
            out.append(model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy())
    return np.concatenate(out)


def torch_predictions(model: torch.nn.Module, prepared) -> np.ndarray:
    return torch_logits(model, prepared).argmax(-1)


def onnx_logits(path: str | Path, prepared) -> np.ndarray:
    from tfopt.bench import ort_session
    from tfopt.feeds import session_feed

    session = ort_session(path)
    names = {i.name for i in session.get_inputs()}
    out = []
    for feed in eval_batches(prepared):
        feed = {k: v for k, v in feed.items() if k in names}
        out.append(session.run(None, session_feed(session, feed))[0])
    return np.concatenate(out)


def accuracy_f1(labels, predictions, num_labels: int) -> tuple[float, float]:
    """Accuracy and macro F1 (the mean over classes of 2PR/(P+R); a class never predicted nor present counts 0)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    accuracy = float((labels == predictions).mean()) if labels.size else 0.0
    f1s = []
    for c in range(num_labels):
        tp = int(((predictions == c) & (labels == c)).sum())
        fp = int(((predictions == c) & (labels != c)).sum())
        fn = int(((predictions != c) & (labels == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return accuracy, float(np.mean(f1s))
