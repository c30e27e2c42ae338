"""An encoder-decoder model -> two ONNX graphs: ``encoder.onnx`` and ``decoder.onnx`` (one decoding step with past).

Both exporters; batch, source length, new tokens and past length are dynamic. The example
shapes are all > 1 and distinct (batch 2, source 5, 2 new tokens, past 3), so the exporter
specializes none of them; two new tokens also keep the dynamo exporter from turning the
causal flag into a symbolic condition. The decoder's metadata carries the start, end and pad
tokens (:func:`tfopt.encoder_decoder.token_metadata`). Each graph is kept only once it ran
on ONNX Runtime and matched torch (the first step with an empty past among the checks).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tfopt import encoder_decoder as names
from tfopt.bench import ort_session
from tfopt.errors import TfoptError, first_line
from tfopt.graph.io import read_io_spec
from tfopt.results import ExportResult, RunContext
from tfopt.torch_kit import chosen_exporter, export_staged

from . import step as steps
from .models import SourceModel
from .source import source_model

ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"
# report.json's outputs naming the encoder of each stage (the decoder is the run's own model)
ENCODER_OUTPUTS = {"export": "encoder_exported", "fuse": "encoder_optimized", "final": "encoder_final"}
EXAMPLE = dict(batch=2, length=5, past=3, new=2)
SELF_CHECKS = ((3, 6, 0, 1), (2, 4, 5, 1), (2, 7, 4, 3))  # (batch, source length, past, new tokens)
SELF_CHECK_TOLERANCE = 1e-3  # gross errors only; verify measures parity
LEGACY_OPSET, DYNAMO_OPSET = 17, 20


def export_source(ctx: RunContext) -> ExportResult:
    source = source_model(ctx)
    exporter = chosen_exporter(ctx)
    opset = int(ctx.option("opset", DYNAMO_OPSET if exporter == "dynamo" else LEGACY_OPSET))
    work = Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ctx.progress(f"exporting {source.name}'s encoder and decoder with the {exporter} exporter (opset {opset}) ...")
    encoder, decoder = work / ENCODER_FILE, work / DECODER_FILE
    export_staged(encoder, f"{source.name} (encoder)", exporter,
                  lambda staged: _export(source, "encoder", staged, exporter, opset), check=lambda kept: _check(source, kept, None))
    export_staged(decoder, f"{source.name} (decoder)", exporter,
                  lambda staged: _export(source, "decoder", staged, exporter, opset), check=lambda kept: _check(source, encoder, kept))
    ctx.add_output(ENCODER_OUTPUTS["export"], encoder)
    return ExportResult(model_path=decoder, io=read_io_spec(decoder), info=source.decoder_info, exporter=exporter,
                        seconds=time.perf_counter() - start)


def _example(source: SourceModel, graph: str):
    import torch

    rng = np.random.default_rng(0)
    encoder = steps.encoder_feed(source, EXAMPLE["batch"], EXAMPLE["length"], rng)
    if graph == "encoder":
        return tuple(torch.from_numpy(encoder[n]) for n in steps.encoder_inputs(source))
    cross = steps.run_torch(steps.encoder_step(source), steps.encoder_inputs(source), encoder)[1:]
    feed = steps.decoder_feed(source, encoder, cross, EXAMPLE["past"], EXAMPLE["new"], rng)
    return tuple(torch.from_numpy(feed[n]) for n in steps.decoder_inputs(source))


def _axes(source: SourceModel, graph: str) -> dict[str, dict[int, str]]:
    """Named dynamic axes: batch, source (the encoder's length), new (tokens this step), past, total."""
    source_axis = {0: "batch"} if source.spec.audio else {0: "batch", 1: "source"}
    axes = {names.INPUT_FEATURES: {0: "batch"}, names.ATTENTION_MASK: {0: "batch", 1: "source"},
            names.ENCODER_HIDDEN: source_axis, names.ENCODER_MASK: {0: "batch", 1: "source"}}
    if graph == "encoder":
        axes[names.INPUT_IDS] = {0: "batch", 1: "source"}
    else:
        axes[names.INPUT_IDS] = {0: "batch", 1: "new"}
        axes[names.LOGITS] = {0: "batch", 1: "new"}
    cross_axis = {0: "batch"} if source.spec.audio else {0: "batch", 2: "source"}
    for name in names.cross_past_names(source.decoder_layers):
        axes[name] = axes[names.present_name(name)] = cross_axis
    for name in names.self_past_names(source.decoder_layers):
        axes[name], axes[names.present_name(name)] = {0: "batch", 2: "past"}, {0: "batch", 2: "total"}
    return axes


def _export(source: SourceModel, graph: str, path: Path, exporter: str, opset: int) -> Path:
    import torch

    module = steps.encoder_step(source) if graph == "encoder" else steps.decoder_step(source)
    inputs = steps.encoder_inputs(source) if graph == "encoder" else steps.decoder_inputs(source)
    outputs = steps.encoder_outputs(source) if graph == "encoder" else steps.decoder_outputs(source)
    axes = _axes(source, graph)
    args = _example(source, graph)
    if exporter == "dynamo":
        dynamic = torch.export.Dim.DYNAMIC
        shapes = [{axis: dynamic for axis in axes[name]} for name in inputs]
        grouped = (shapes[0], tuple(shapes[1:])) if graph == "decoder" else (tuple(shapes),)  # forward(ids, *rest) / forward(*inputs)
        torch.onnx.export(module, args, str(path), dynamo=True, input_names=inputs, output_names=outputs,
                          dynamic_shapes=grouped, opset_version=opset, verbose=False)
    else:
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=inputs, output_names=outputs,
                          opset_version=opset, dynamic_axes={name: axes[name] for name in inputs + outputs})
    if graph == "decoder":
        _write_tokens(source, path)
    return path


def _write_tokens(source: SourceModel, path: Path) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    tokens = names.GenerationTokens(source.decoder_start_token_id, source.eos_token_id, source.pad_token_id)
    existing = {entry.key: entry for entry in model.metadata_props}
    for key, value in names.token_metadata(tokens).items():
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def _check(source: SourceModel, encoder: Path, decoder: Path | None) -> None:
    """The graph runs on ONNX Runtime and matches torch: the encoder on padded sources, the decoder on steps
    with past 0 (the first step) and more, fed by the ONNX encoder's cross keys/values."""
    graph = "encoder" if decoder is None else "decoder"
    try:
        encoder_session = ort_session(encoder)
        session = encoder_session if decoder is None else ort_session(decoder)
    except Exception as exc:
        raise TfoptError(f"{source.name}: ONNX Runtime cannot load the {graph} export ({first_line(exc)})") from None
    rng = np.random.default_rng(1)
    module = steps.encoder_step(source) if decoder is None else steps.decoder_step(source)
    for batch, length, past, new in SELF_CHECKS:
        feed = steps.encoder_feed(source, batch, length, rng)
        try:
            encoded = encoder_session.run(steps.encoder_outputs(source), feed)
            if decoder is not None:
                feed = steps.decoder_feed(source, feed, encoded[1:], past, new, rng)
            actual = session.run(steps.encoder_outputs(source) if decoder is None else steps.decoder_outputs(source), feed)
        except Exception as exc:
            raise TfoptError(f"{source.name}: the {graph} export does not run (batch {batch}, past {past}: {first_line(exc)})") from None
        expected = steps.run_torch(module, steps.encoder_inputs(source) if decoder is None else steps.decoder_inputs(source), feed)
        worst = max(float(np.abs(a - e).max()) for a, e in zip(actual[1:] if decoder is None else actual, expected[1:] if decoder is None else expected))
        if not worst <= SELF_CHECK_TOLERANCE:
            raise TfoptError(f"{source.name}: the {graph} export differs from torch by {worst:.3g} (limit {SELF_CHECK_TOLERANCE})")
