"""A decoder LLM as one decoding step -> ONNX with torch's dynamo exporter; dynamic batch, sequence and past.

Inputs ``input_ids``, ``attention_mask`` (past + new), ``position_ids`` and
``past_key_values.{i}.key/value``; outputs ``logits`` and ``present.{i}.key/value``
(:mod:`tfopt.causal_lm`, the gpt2 adapter's convention). The export is written only after
it ran on ONNX Runtime with an empty past and with a past, matching torch on real tokens.
"""

from __future__ import annotations

import time
from pathlib import Path

from tfopt import causal_lm
from tfopt.bench import ort_session
from tfopt.errors import TfoptError, first_line
from tfopt.graph.io import read_io_spec
from tfopt.results import ExportResult, RunContext
from tfopt.torch_kit import export_staged

from .models import SourceModel
from .step import difference_stats, feeds, output_names, source_model, torch_outputs

EXPORTED_FILE = "exported.onnx"
DEFAULT_OPSET = 20  # the dynamo exporter's own; fusion raises it to 23 where that is exact
# Batch 2, past 5, 3 new tokens: all > 1 and distinct, so the exporter specializes none of them.
EXAMPLE_SHAPE = causal_lm.StepShape(2, 5, 3)
SELF_CHECK_SHAPES = (causal_lm.StepShape(3, 0, 4), causal_lm.StepShape(2, 6, 1))
SELF_CHECK_TOLERANCE = 1e-3  # gross errors only; verify measures parity


def export_source(ctx: RunContext) -> ExportResult:
    if ctx.option("exporter", "dynamo") != "dynamo":
        raise TfoptError("the llama adapter exports with torch's dynamo exporter only (exporter=dynamo)")
    source = source_model(ctx)
    opset = int(ctx.option("opset", DEFAULT_OPSET))
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    path = Path(ctx.work_dir) / EXPORTED_FILE
    ctx.progress(f"exporting {source.name} with the dynamo exporter (opset {opset}) ...")
    start = time.perf_counter()

    def export(staged: Path) -> Path:
        _export(source, staged, opset)
        return staged

    export_staged(path, source.name, "dynamo", export, check=lambda kept: _self_check(source, kept))
    return ExportResult(model_path=path, io=read_io_spec(path), info=source.info, exporter="dynamo", seconds=time.perf_counter() - start)


def _export(source: SourceModel, path: Path, opset: int) -> None:
    import torch

    (feed,) = feeds(source, [EXAMPLE_SHAPE])
    step = causal_lm.decoder_step(source.model, source.num_layers, lm_head=True)
    dynamic = torch.export.Dim.DYNAMIC  # mask length = past + sequence is inferred by torch itself
    tokens = {0: dynamic, 1: dynamic}
    past = tuple({0: dynamic, 2: dynamic} for _ in causal_lm.past_names(source.num_layers))
    large = sum(p.numel() * p.element_size() for p in source.model.parameters()) >= (1 << 30)
    torch.onnx.export(
        step, causal_lm.torch_feed(feed, source.num_layers), str(path), dynamo=True,
        dynamic_shapes=(tokens, tokens, tokens, past), input_names=causal_lm.input_names(source.num_layers),
        output_names=output_names(source), opset_version=opset, external_data=large, verbose=False,
    )


def _self_check(source: SourceModel, path: Path) -> None:
    """The first step (no past) and a decode step run on ONNX Runtime and match torch on real tokens."""
    try:
        session = ort_session(path)
    except Exception as exc:
        raise TfoptError(f"{source.name}: ONNX Runtime cannot load the export ({first_line(exc)})") from None
    for shape, feed in zip(SELF_CHECK_SHAPES, feeds(source, SELF_CHECK_SHAPES, seed=1)):
        try:
            actual = session.run(output_names(source), feed)
        except Exception as exc:
            raise TfoptError(f"{source.name}: the export does not run with past length {shape.past_length} ({first_line(exc)})") from None
        worst = difference_stats(feed, torch_outputs(source, feed), actual).max_abs
        if not worst <= SELF_CHECK_TOLERANCE:
            raise TfoptError(f"{source.name}: the export differs from torch by {worst:.3g} at {shape} (limit {SELF_CHECK_TOLERANCE})")
