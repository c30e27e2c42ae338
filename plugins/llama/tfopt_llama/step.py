"""The run's model and its decoding step: names, feeds, and the PyTorch outputs for a feed."""

from __future__ import annotations

import numpy as np

from tfopt import causal_lm
from tfopt.results import DiffStats, RunContext
from tfopt.run_cache import PerRun
from tfopt.verify import diff_stats, merge_stats

from .models import DEFAULT_SOURCE, SourceModel, load_source

OUTPUT = "logits"
_MODELS: PerRun[SourceModel] = PerRun()


def source_model(ctx: RunContext) -> SourceModel:
    """The run's model, loaded on first use (export, dummy inputs and verify share it)."""
    attn = ctx.option("attn_implementation")

    def load() -> SourceModel:
        ctx.progress(f"loading {ctx.source or DEFAULT_SOURCE + ' (the default: random weights)'} ...")
        return load_source(ctx.source, attn, seed=int(ctx.option("seed", 0)), progress=ctx.progress)

    return _MODELS.get(ctx, (ctx.source, attn), load)


def output_names(source: SourceModel) -> list[str]:
    return [OUTPUT, *causal_lm.present_names(source.num_layers)]


def feeds(source: SourceModel, shapes, *, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Left-padded decoding steps (row 0 unpadded, the others padded by a random amount)."""
    rng = np.random.default_rng(seed)
    return [
        causal_lm.step_feed(
            shape, num_layers=source.num_layers, num_heads=source.num_kv_heads, head_size=source.head_size,
            vocab_size=source.vocab_size, rng=rng,
        )
        for shape in shapes
    ]


def torch_outputs(source: SourceModel, feed: dict[str, np.ndarray], step=None) -> list[np.ndarray]:
    import torch

    step = step or causal_lm.decoder_step(source.model, source.num_layers, lm_head=True)
    with torch.inference_mode():
        outputs = step(*causal_lm.torch_feed(feed, source.num_layers))
    return [value.float().numpy() for value in outputs]


def real_token_mask(feed: dict[str, np.ndarray], sequence_length: int) -> np.ndarray:
    """[batch, sequence] True where the new token is not padding: only those outputs are compared.

    Padded queries may attend to nothing; what a kernel writes there (torch's sdpa: zeros,
    the exported softmax over an all-masked row: the mean of the values) is read by no one.
    """
    return feed[causal_lm.ATTENTION_MASK][:, -sequence_length:].astype(bool)


def difference_stats(feed: dict[str, np.ndarray], expected, actual) -> DiffStats:
    """Differences over real tokens: logits per query position, presents per key position (worst of all)."""
    sequence = feed[causal_lm.INPUT_IDS].shape[1]
    stats = [diff_stats(expected[0], actual[0], real_token_mask(feed, sequence))]
    keys = feed[causal_lm.ATTENTION_MASK].astype(bool)
    for reference, candidate in zip(expected[1:], actual[1:]):
        # present: [batch, kv_heads, total, head_size] -> [batch, total, ...] to mask key positions
        stats.append(diff_stats(reference.transpose(0, 2, 1, 3), candidate.transpose(0, 2, 1, 3), keys))
    return merge_stats(stats)
