"""PyTorch -> ONNX: both towers in one graph, written atomically.

Inputs ``input_ids`` [text_batch, sequence], ``attention_mask`` (CLIP only) and ``pixel_values``
[image_batch, C, H, W]; outputs ``text_embeds`` [text_batch, D], ``image_embeds`` [image_batch, D]
and ``logits_per_image`` [image_batch, text_batch]. The two batches are distinct dynamic axes
(a model scores any number of captions against any number of images); the sequence is dynamic.
The dynamo exporter (torch's default) gets them by name in ``dynamic_shapes``, the legacy one in
``dynamic_axes``. Opsets: dynamo 20, legacy 17; ``ctx.options['opset']`` overrides both.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel

from tfopt.graph.io import EXTERNAL_DATA_THRESHOLD, read_io_spec
from tfopt.results import ExportResult, RunContext
from tfopt.torch_kit import chosen_exporter, export_staged

from .cache import remember, source_model
from .models import SourceModel, describe

DEFAULT_OPSETS = {"dynamo": 20, "legacy": 17}
OUTPUT_NAMES = ("text_embeds", "image_embeds", "logits_per_image")
EXPORTED_FILE = "exported.onnx"
# Example sizes above 1 and all different, so no exporter specializes an axis or ties two together.
EXAMPLE_TEXT_BATCH, EXAMPLE_IMAGE_BATCH, EXAMPLE_SEQUENCE = 3, 2, 7
TEXT_AXES = {0: "text_batch", 1: "sequence"}
IMAGE_AXES = {0: "image_batch"}


def input_names(source: SourceModel) -> tuple[str, ...]:
    return ("input_ids", "attention_mask", "pixel_values") if source.takes_mask else ("input_ids", "pixel_values")


class SplitHeadAttention(torch.nn.Module):
    """SigLIP's pooling head attention (``torch.nn.MultiheadAttention``, one learned probe as the
    query) written as separate q/k/v projections and ``scaled_dot_product_attention``, for the export
    only: the same numbers (verify compares the ONNX model with the untouched torch model), but the
    form the shared MultiHeadAttention rule fuses. nn.MultiheadAttention's own export (packed in_proj,
    sequence-first bmm) leaves its Softmax unfused."""

    def __init__(self, attention: torch.nn.MultiheadAttention):
        super().__init__()
        self.attention = attention

    def forward(self, query, key, value):
        attention = self.attention
        width, heads = attention.embed_dim, attention.num_heads
        q_weight, k_weight, v_weight = attention.in_proj_weight.split(width)
        q_bias, k_bias, v_bias = attention.in_proj_bias.split(width)
        batch = key.shape[0]

        def split(x):
            return x.reshape(batch, -1, heads, width // heads).transpose(1, 2)

        q = split(torch.nn.functional.linear(query, q_weight, q_bias))
        k = split(torch.nn.functional.linear(key, k_weight, k_bias))
        v = split(torch.nn.functional.linear(value, v_weight, v_bias))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, width)
        return (attention.out_proj(out),)


@contextlib.contextmanager
def export_form(model: PreTrainedModel):
    """SigLIP's head attention as :class:`SplitHeadAttention` while exporting; restored after."""
    head = getattr(getattr(model, "vision_model", None), "head", None)
    attention = getattr(head, "attention", None)
    packed = isinstance(attention, torch.nn.MultiheadAttention) and attention.batch_first and attention.in_proj_weight is not None
    if not packed or attention.in_proj_bias is None:
        yield
        return
    head.attention = SplitHeadAttention(attention)
    try:
        yield
    finally:
        head.attention = attention


class TwoTowers(torch.nn.Module):
    """The model called with keywords (transformers 5 needs them), returning the three outputs."""

    def __init__(self, model: PreTrainedModel, takes_mask: bool):
        super().__init__()
        self.model = model
        self.takes_mask = takes_mask

    def forward(self, input_ids, *rest):
        if self.takes_mask:
            attention_mask, pixel_values = rest
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
        else:
            (pixel_values,) = rest
            out = self.model(input_ids=input_ids, pixel_values=pixel_values)
        return out.text_embeds, out.image_embeds, out.logits_per_image


def export_source(ctx: RunContext) -> ExportResult:
    """The ``export`` hook: load ``ctx.source`` (cached for the later stages) and export it."""
    return export_loaded(ctx, source_model(ctx))


def export_model(ctx: RunContext, model: PreTrainedModel, name: str = "model") -> ExportResult:
    """Export a model built in code (tests); it becomes the run's model for verify/benchmark."""
    return export_loaded(ctx, remember(ctx, describe(model, name)))


def export_loaded(ctx: RunContext, source: SourceModel) -> ExportResult:
    exporter = chosen_exporter(ctx)
    opset = int(ctx.option("opset", DEFAULT_OPSETS[exporter]))
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.work_dir / EXPORTED_FILE
    ctx.progress(f"exporting {source.name} (text and vision towers) with the {exporter} exporter (opset {opset}) ...")
    start = time.perf_counter()
    wrapper = TwoTowers(source.model, source.takes_mask).eval()
    with export_form(source.model):
        export_staged(path, source.name, exporter, lambda staged: _run_exporter(wrapper, source, staged, exporter, opset))
    return ExportResult(
        model_path=path, io=read_io_spec(path), info=source.info, exporter=exporter, seconds=time.perf_counter() - start
    )


def example_inputs(source: SourceModel) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, max(4, source.vocab_size - 1), (EXAMPLE_TEXT_BATCH, EXAMPLE_SEQUENCE), generator=generator)
    if source.eos_token_id is not None:
        ids[:, -1] = source.eos_token_id
    pixels = torch.randn(
        EXAMPLE_IMAGE_BATCH, source.num_channels, source.image_size, source.image_size, generator=generator
    )
    if source.takes_mask:
        return ids, torch.ones_like(ids), pixels
    return ids, pixels


def _run_exporter(wrapper: TwoTowers, source: SourceModel, path: Path, exporter: str, opset: int) -> Path:
    names = input_names(source)
    common = dict(input_names=list(names), output_names=list(OUTPUT_NAMES), opset_version=opset, verbose=False)
    axes = {name: (IMAGE_AXES if name == "pixel_values" else TEXT_AXES) for name in names}
    if exporter == "dynamo":
        large = sum(p.numel() * p.element_size() for p in source.model.parameters()) >= EXTERNAL_DATA_THRESHOLD
        shapes = {"input_ids": TEXT_AXES, "rest": tuple(axes[name] for name in names[1:])}
        torch.onnx.export(
            wrapper, example_inputs(source), str(path), dynamo=True, dynamic_shapes=shapes, external_data=large, **common
        )
    else:
        outputs = {"text_embeds": {0: "text_batch"}, "image_embeds": {0: "image_batch"},
                   "logits_per_image": {0: "image_batch", 1: "text_batch"}}
        torch.onnx.export(
            wrapper, example_inputs(source), str(path), dynamo=False, dynamic_axes={**axes, **outputs}, **common
        )
    return path
