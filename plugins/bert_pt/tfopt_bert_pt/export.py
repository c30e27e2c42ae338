"""PyTorch -> ONNX with either of torch's exporters, dynamic batch and sequence, written atomically.

Opsets: dynamo 20 (Gelu is one op from opset 20 on; the dynamo exporter's own default),
legacy 17 (the first with LayerNormalization as one op; the TorchScript exporter's
well-trodden opset). ``ctx.options['opset']`` overrides both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from tfopt.errors import TfoptError, first_line
from tfopt.graph.io import EXTERNAL_DATA_THRESHOLD, read_io_spec
from tfopt.results import ExportResult, RunContext
from tfopt.torch_kit import chosen_exporter, quiet_export

from .cache import remember, source_model
from .inputs import token_feeds
from .models import SourceModel, describe

DEFAULT_OPSETS = {"dynamo": 20, "legacy": 17}
OUTPUT_NAME = "last_hidden_state"
EXPORTED_FILE = "exported.onnx"
_EXAMPLE_SHAPE = (2, 8)  # > 1 each, so neither exporter specializes them; row 2 padded


class HiddenStates(torch.nn.Module):
    """Calls the model with keyword arguments (transformers 5 needs them) and returns last_hidden_state."""

    def __init__(self, model: PreTrainedModel, input_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = token_type_ids
        return self.model(**feeds).last_hidden_state


def export_source(ctx: RunContext) -> ExportResult:
    """The ``export`` hook: load ``ctx.source`` (cached for the later stages) and export it."""
    return export_loaded(ctx, source_model(ctx))


def export_model(ctx: RunContext, model: PreTrainedModel, name: str = "model") -> ExportResult:
    """Export a model built in code (benchmarks, tests); it becomes the run's model for verify/benchmark."""
    return export_loaded(ctx, remember(ctx, describe(model, name)))


def export_loaded(ctx: RunContext, source: SourceModel) -> ExportResult:
    exporter = chosen_exporter(ctx)
    opset = int(ctx.option("opset", DEFAULT_OPSETS[exporter]))
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.work_dir / EXPORTED_FILE
    ctx.progress(f"exporting {source.name} with the {exporter} exporter (opset {opset}) ...")
    start = time.perf_counter()
    wrapper = HiddenStates(source.model, source.input_names).eval()
    with _atomic_output(path) as tmp_path, quiet_export():
        try:
            _run_exporter(wrapper, source, tmp_path, exporter, opset)
        except TfoptError:
            raise
        except Exception as exc:
            raise TfoptError(f"{source.name}: the {exporter} exporter failed ({first_line(exc)})") from None
    return ExportResult(
        model_path=path,
        io=read_io_spec(path),
        info=source.info,
        exporter=exporter,
        seconds=time.perf_counter() - start,
    )


def _run_exporter(wrapper: HiddenStates, source: SourceModel, path: Path, exporter: str, opset: int) -> None:
    names = source.input_names
    batch, sequence = _EXAMPLE_SHAPE
    feeds = token_feeds(
        names, batch, sequence, vocab_size=source.vocab_size, pad_token_id=source.pad_token_id, rng=np.random.default_rng(0)
    )
    example = tuple(torch.from_numpy(feeds[name]) for name in names)
    large = sum(p.numel() * p.element_size() for p in source.model.parameters()) >= EXTERNAL_DATA_THRESHOLD
    common = dict(input_names=list(names), output_names=[OUTPUT_NAME], opset_version=opset, verbose=False)
    if exporter == "dynamo":
        batch_dim = torch.export.Dim("batch")
        sequence_dim = torch.export.Dim("sequence", max=source.max_sequence_length)
        dynamic_shapes = {name: {0: batch_dim, 1: sequence_dim} for name in names}
        torch.onnx.export(
            wrapper, example, str(path), dynamo=True, dynamic_shapes=dynamic_shapes, external_data=large, **common
        )
    else:
        axes = {name: {0: "batch", 1: "sequence"} for name in (*names, OUTPUT_NAME)}
        torch.onnx.export(wrapper, example, str(path), dynamo=False, dynamic_axes=axes, **common)


@contextlib.contextmanager
def _atomic_output(path: Path):
    """Export into a temp dir beside ``path``; move the model (and any external data) in only on success."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp_path = tmp_dir / path.name
        yield tmp_path
        data = tmp_dir / (path.name + ".data")
        if data.exists():  # external data is referenced by file name, so it keeps its name
            os.replace(data, path.parent / data.name)
        os.replace(tmp_path, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
