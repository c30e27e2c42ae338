"""GPT-2 with past -> ONNX with either of torch's exporters; dynamic batch, sequence and past length.

The example past is non-empty (an empty one lets an exporter specialize the past length
to 0), yet the graph must also run the first step, with no past at all: every export is
checked on ORT with past length 0 and with a past before it is kept.

Opsets: dynamo 20 (its own default; Gelu is one op from 20 on), legacy 17 (the first with
LayerNormalization as one op). ``ctx.options['opset']`` overrides both.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch

from tfopt.bench import ort_session
from tfopt.errors import TfoptError, first_line
from tfopt.graph.io import EXTERNAL_DATA_THRESHOLD, read_io_spec, save_model
from tfopt.results import ExportResult, RunContext
from tfopt.torch_kit import chosen_exporter, export_staged

from .cache import remember, source_model
from .decoder import (
    ATTENTION_MASK,
    INPUT_IDS,
    POSITION_IDS,
    decoder_step,
    input_names,
    output_names,
    past_names,
    run_torch,
    torch_feed,
)
from .inputs import StepShape, feeds_for_shapes
from .models import SourceModel, describe

DEFAULT_OPSETS = {"dynamo": 20, "legacy": 17}
EXPORTED_FILE = "exported.onnx"
# Batch 2, past 5, 3 new tokens: all > 1 and distinct, so no exporter specializes or merges them.
EXAMPLE_SHAPE = StepShape(batch_size=2, past_length=5, sequence_length=3)
# What the export self-check accepts: gross errors only (verify measures parity properly).
SELF_CHECK_TOLERANCE = 1e-3

BATCH, SEQUENCE, PAST, TOTAL = "batch", "sequence", "past_sequence", "total_sequence"


def dynamic_axes(source: SourceModel) -> dict[str, dict[int, str]]:
    """Every input and output's dynamic axes, named the same for both exporters."""
    axes = {
        INPUT_IDS: {0: BATCH, 1: SEQUENCE},
        ATTENTION_MASK: {0: BATCH, 1: TOTAL},
        POSITION_IDS: {0: BATCH, 1: SEQUENCE},
        source.output_name: {0: BATCH, 1: SEQUENCE},
    }
    for name in past_names(source.num_layers):
        axes[name] = {0: BATCH, 2: PAST}
    for name in output_names(source)[1:]:
        axes[name] = {0: BATCH, 2: TOTAL}
    return axes


def export_source(ctx: RunContext) -> ExportResult:
    """The ``export`` hook: load ``ctx.source`` (cached for the later stages) and export it."""
    return export_loaded(ctx, source_model(ctx))


def export_model(ctx: RunContext, model, name: str = "model") -> ExportResult:
    """Export a GPT-2 built in code (benchmarks, tests); it becomes the run's model for the later stages."""
    return export_loaded(ctx, remember(ctx, describe(model, name)))


def export_loaded(ctx: RunContext, source: SourceModel) -> ExportResult:
    exporter = chosen_exporter(ctx)
    opset = int(ctx.option("opset", DEFAULT_OPSETS[exporter]))
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    path = Path(ctx.work_dir) / EXPORTED_FILE
    ctx.progress(f"exporting {source.name} with the {exporter} exporter (opset {opset}) ...")
    start = time.perf_counter()

    def export(raw: Path) -> Path:
        _run_exporter(source, raw, exporter, opset)
        model = ir.load(raw)
        settle_io_shapes(model, source, rename_symbols=exporter == "dynamo")
        return save_model(model, raw.parent / "staged" / path.name)  # weights beside it when large

    export_staged(path, source.name, exporter, export, check=lambda staged: check_runs_with_and_without_past(source, staged))
    return ExportResult(
        model_path=path, io=read_io_spec(path), info=source.info, exporter=exporter, seconds=time.perf_counter() - start
    )


def _run_exporter(source: SourceModel, path: Path, exporter: str, opset: int) -> None:
    (feed,) = feeds_for_shapes(source, [EXAMPLE_SHAPE], seed=0)
    example = torch_feed(feed, source.num_layers)
    step = decoder_step(source)
    large = sum(p.numel() * p.element_size() for p in source.model.parameters()) >= EXTERNAL_DATA_THRESHOLD
    names = dict(input_names=input_names(source.num_layers), output_names=output_names(source), opset_version=opset)
    if exporter == "dynamo":
        # Dim.DYNAMIC everywhere: torch infers mask length = past + sequence itself; named
        # Dims would have to spell out that sum, which Dim arithmetic cannot express.
        dynamic = torch.export.Dim.DYNAMIC
        tokens = {0: dynamic, 1: dynamic}
        past = tuple({0: dynamic, 2: dynamic} for _ in past_names(source.num_layers))
        torch.onnx.export(
            step, example, str(path), dynamo=True, dynamic_shapes=(tokens, tokens, tokens, past),
            external_data=large, verbose=False, **names,
        )
    else:
        torch.onnx.export(step, example, str(path), dynamo=False, dynamic_axes=dynamic_axes(source), verbose=False, **names)


_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def io_shapes(source: SourceModel) -> dict[str, list[int | str]]:
    """Every graph input and output's full shape: axis names where dynamic, sizes where fixed."""
    heads, head_size = source.num_heads, source.head_size
    width = source.vocab_size if source.lm_head else source.info.hidden_size
    shapes: dict[str, list[int | str]] = {
        INPUT_IDS: [BATCH, SEQUENCE],
        ATTENTION_MASK: [BATCH, TOTAL],
        POSITION_IDS: [BATCH, SEQUENCE],
        source.output_name: [BATCH, SEQUENCE, width],
    }
    shapes.update({name: [BATCH, heads, PAST, head_size] for name in past_names(source.num_layers)})
    shapes.update({name: [BATCH, heads, TOTAL, head_size] for name in output_names(source)[1:]})
    return shapes


def settle_io_shapes(model: ir.Model, source: SourceModel, *, rename_symbols: bool) -> None:
    """Declare the same IO shapes for both exporters' graphs.

    The dynamo exporter names its symbols ``s10``, ``s15 + s70``; with ``rename_symbols``
    the symbols read off the graph inputs are renamed in every value's shape, so
    intermediate shapes stay consistent with the inputs. The legacy exporter leaves odd
    names where it could not tell a size (``Reshapelast_hidden_state_dim_2``).
    """
    shapes = io_shapes(source)
    if rename_symbols:
        renames: dict[str, str] = {}
        for value in model.graph.inputs:
            for dim, wanted in zip(value.shape or (), shapes.get(value.name, ())):
                if isinstance(dim, ir.SymbolicDim) and dim.value and isinstance(wanted, str):
                    renames.setdefault(dim.value, wanted)

        def renamed(dim):
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                return ir.SymbolicDim(_SYMBOL.sub(lambda m: renames.get(m.group(0), m.group(0)), dim.value))
            return dim

        nodes = ir.traversal.RecursiveGraphIterator(model.graph)
        for value in [*model.graph.inputs, *(out for node in nodes for out in node.outputs)]:
            if value.shape is not None:
                value.shape = ir.Shape([renamed(dim) for dim in value.shape])
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.name in shapes:
            value.shape = ir.Shape(shapes[value.name])


def check_runs_with_and_without_past(source: SourceModel, model_path: Path) -> None:
    """Run the graph on ORT with past length 0 (the first step) and with a past; compare with torch.

    An exporter that specialized a length, or a graph that cannot take an empty past,
    fails here with a one-line error instead of at the user's first generation step.
    """
    try:
        session = ort_session(model_path)
    except Exception as exc:
        raise TfoptError(f"{source.name}: ONNX Runtime cannot load the export ({first_line(exc)})") from None
    step = decoder_step(source)
    shapes = [StepShape(3, 0, 4), StepShape(2, 6, 1)]
    for shape, feed in zip(shapes, feeds_for_shapes(source, shapes, seed=1)):
        try:
            actual = session.run(output_names(source), feed)
        except Exception as exc:
            raise TfoptError(
                f"{source.name}: the export does not run with past length {shape.past_length} ({first_line(exc)})"
            ) from None
        expected = run_torch(source, feed, step)
        valid = feed[ATTENTION_MASK][:, -shape.sequence_length :].astype(bool)
        worst = float(np.abs(actual[0] - expected[source.output_name])[valid].max())
        if not worst <= SELF_CHECK_TOLERANCE:
            raise TfoptError(
                f"{source.name}: the export differs from torch by {worst:.3g} at past length {shape.past_length}"
            )
