"""PyTorch -> ONNX: ``pixel_values`` [batch, 3, H, W] -> ``last_hidden_state``, dynamic batch, written atomically.

The dynamo exporter (torch's default) gets the batch as ``Dim.DYNAMIC`` named ``batch`` (a
string in ``dynamic_shapes`` is exactly that, and the name carries into the graph); the legacy
one gets ``dynamic_axes``. Opsets as bert_pt's: dynamo 20 (Gelu is one op), legacy 17;
``ctx.options['opset']`` overrides both.

Swin: torch 2.13's dynamo exporter fails on its window partition ("Cannot view a tensor ...
as ..."), so a Swin model exports with the legacy exporter unless ``--exporter`` names one;
the run says so. No other family is switched.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import PreTrainedModel

from tfopt.errors import TfoptError
from tfopt.graph.io import EXTERNAL_DATA_THRESHOLD, read_io_spec
from tfopt.results import ExportResult, RunContext
from tfopt.torch_kit import chosen_exporter, export_staged

from .cache import remember, source_model
from .models import SourceModel, describe

DEFAULT_OPSETS = {"dynamo": 20, "legacy": 17}
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "last_hidden_state"
EXPORTED_FILE = "exported.onnx"
EXAMPLE_BATCH = 2  # > 1, so the exporters keep the axis dynamic
DYNAMO_FAILS_ON = ("swin",)  # tfopt model types torch 2.13's dynamo exporter cannot export
SWIN_NOTE = "Swin exports with the legacy exporter: torch 2.13's dynamo exporter fails on its window views"


class LastHiddenState(torch.nn.Module):
    """The model called with a keyword argument (transformers 5 needs it), returning last_hidden_state."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).last_hidden_state


def export_source(ctx: RunContext) -> ExportResult:
    """The ``export`` hook: load ``ctx.source`` (cached for the later stages) and export it."""
    return export_loaded(ctx, source_model(ctx))


def export_model(ctx: RunContext, model: PreTrainedModel, name: str = "model") -> ExportResult:
    """Export a model built in code (tests, benchmarks); it becomes the run's model for verify/benchmark."""
    return export_loaded(ctx, remember(ctx, describe(model, name)))


def exporter_for(ctx: RunContext, source: SourceModel) -> str:
    """``--exporter`` when given; else torch's default, but legacy for Swin (said in a progress line)."""
    if ctx.option("exporter") is None and source.info.model_type in DYNAMO_FAILS_ON:
        ctx.progress(f"{SWIN_NOTE} (--exporter dynamo to try it)")
        return "legacy"
    return chosen_exporter(ctx)


def export_loaded(ctx: RunContext, source: SourceModel) -> ExportResult:
    exporter = exporter_for(ctx, source)
    opset = int(ctx.option("opset", DEFAULT_OPSETS[exporter]))
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.work_dir / EXPORTED_FILE
    ctx.progress(f"exporting {source.name} with the {exporter} exporter (opset {opset}) ...")
    start = time.perf_counter()
    wrapper = LastHiddenState(source.model).eval()
    try:
        export_staged(path, source.name, exporter, lambda staged: _run_exporter(wrapper, source, staged, exporter, opset))
    except TfoptError as exc:
        if exporter == "dynamo" and source.info.model_type in DYNAMO_FAILS_ON:
            raise TfoptError(f"{exc}; {SWIN_NOTE}: use --exporter legacy") from None
        raise
    return ExportResult(
        model_path=path, io=read_io_spec(path), info=source.info, exporter=exporter, seconds=time.perf_counter() - start
    )


def _run_exporter(wrapper: LastHiddenState, source: SourceModel, path: Path, exporter: str, opset: int) -> Path:
    generator = torch.Generator().manual_seed(0)
    example = (torch.randn(EXAMPLE_BATCH, source.num_channels, source.image_size, source.image_size, generator=generator),)
    common = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset, verbose=False)
    if exporter == "dynamo":
        large = sum(p.numel() * p.element_size() for p in source.model.parameters()) >= EXTERNAL_DATA_THRESHOLD
        torch.onnx.export(
            wrapper, example, str(path), dynamo=True, dynamic_shapes={INPUT_NAME: {0: "batch"}}, external_data=large, **common
        )
    else:
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        torch.onnx.export(wrapper, example, str(path), dynamo=False, dynamic_axes=axes, **common)
    return path
