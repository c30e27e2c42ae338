"""Export: both exporters, LM head and base model, one graph that runs with and without a past."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from gpt2_cases import EXPORTERS, FP32_TOLERANCE, make_ctx, ort_outputs, shifted_output_model
from tfopt.errors import TfoptError
from tfopt_gpt2.cache import source_model
from tfopt_gpt2.decoder import run_torch
from tfopt_gpt2.export import check_runs_with_and_without_past, export_source
from tfopt_gpt2.inputs import StepShape, feeds_for_shapes

# (batch, past, sequence): the first step with left padding, single-token decode steps,
# a wider step on a past, and a past whose left padding covers most of it.
PARITY_SHAPES = [StepShape(4, 0, 7), StepShape(1, 0, 1), StepShape(3, 9, 1), StepShape(5, 6, 4), StepShape(2, 12, 2)]


def _expected_io(num_layers: int, first_output: str) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], [first_output, *present]


VARIANTS = [
    (model, first_output, exporter, "sdpa")
    for model, first_output in (("tiny-gpt2", "logits"), ("tiny-gpt2-base", "last_hidden_state"))
    for exporter in EXPORTERS
] + [("tiny-distilgpt2", "logits", "legacy", "eager")]


@pytest.mark.parametrize("model, first_output, exporter, attn", VARIANTS, ids=[f"{m}-{e}-{a}" for m, _, e, a in VARIANTS])
def test_export_io_and_parity_with_and_without_past(exported_variant, model, first_output, exporter, attn):
    ctx, exported = exported_variant(model, exporter, attn)
    source = source_model(ctx)
    assert exported.exporter == exporter and exported.model_path.name == "exported.onnx"
    assert exported.info.model_type == "gpt2" and exported.info.num_layers == source.num_layers
    inputs, outputs = _expected_io(source.num_layers, first_output)
    assert list(exported.io.inputs) == inputs and exported.io.outputs == outputs
    assert exported.io.inputs["input_ids"] == "int64" and exported.io.inputs["past_key_values.0.key"] == "float32"
    axes = exported.io.dynamic_axes
    assert axes["input_ids"] == {0: "batch", 1: "sequence"} and axes["attention_mask"] == {0: "batch", 1: "total_sequence"}
    assert axes["past_key_values.1.value"] == {0: "batch", 2: "past_sequence"}
    assert axes["present.0.key"] == {0: "batch", 2: "total_sequence"} and axes[first_output] == {0: "batch", 1: "sequence"}

    for shape, feed in zip(PARITY_SHAPES, feeds_for_shapes(source, PARITY_SHAPES, seed=3)):
        assert not feed["attention_mask"].all() or shape.batch_size == 1  # left padding in every wider batch
        actual = ort_outputs(exported.model_path, feed)
        expected = run_torch(source, feed)
        valid = feed["attention_mask"].astype(bool)
        new_valid = valid[:, -shape.sequence_length :]
        assert actual[first_output].shape == expected[first_output].shape
        assert np.abs(actual[first_output] - expected[first_output])[new_valid].max() <= FP32_TOLERANCE, shape
        for name in outputs[1:]:
            assert actual[name].shape == (shape.batch_size, source.num_heads, shape.total_length, source.head_size)
            assert np.abs(actual[name] - expected[name]).transpose(0, 2, 1, 3)[valid].max() <= FP32_TOLERANCE, (shape, name)
        if shape.past_length:  # the past passes through untouched in front of the new keys/values
            np.testing.assert_array_equal(actual["present.0.key"][:, :, : shape.past_length], feed["past_key_values.0.key"])


@pytest.mark.parametrize("exporter, opset", [("dynamo", 20), ("legacy", 17)])
def test_export_is_quiet_and_leaves_only_the_model(tmp_path, capfd, exporter, opset):
    ctx = make_ctx(tmp_path, "tiny-distilgpt2", exporter=exporter)
    progress = []
    ctx.progress = progress.append
    exported = export_source(ctx)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported.onnx"]  # no temp dirs left behind
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the dynamo exporter's progress lines and warnings are silenced
    assert progress == [
        "loading tiny-distilgpt2 ...",
        f"exporting tiny-distilgpt2 with the {exporter} exporter (opset {opset}) ...",
    ]
    opsets = {o.domain: o.version for o in onnx.load(str(exported.model_path)).opset_import}
    assert opsets[""] == opset
    assert exported.info.hidden_size == 64 and exported.info.num_heads == 4 and exported.info.num_layers == 2


def test_dynamo_is_the_default_exporter(exported_variant):
    ctx, exported = exported_variant("tiny-gpt2", "dynamo")
    assert make_ctx(ctx.work_dir, "tiny-gpt2").option("exporter") is None
    from tfopt_gpt2.export import chosen_exporter

    assert chosen_exporter(make_ctx(ctx.work_dir, "tiny-gpt2")) == "dynamo"
    opsets = {o.domain: o.version for o in onnx.load(str(exported.model_path), load_external_data=False).opset_import}
    assert opsets[""] == 20


def test_unknown_exporter_is_one_line_error(tmp_path):
    with pytest.raises(TfoptError, match="unknown exporter 'jit'"):
        export_source(make_ctx(tmp_path, "tiny-gpt2", exporter="jit"))
    assert not (tmp_path / "exported.onnx").exists()


def test_self_check_rejects_a_wrong_graph(tmp_path, exported_variant):
    ctx, exported = exported_variant("tiny-gpt2", "legacy")
    broken = tmp_path / "broken.onnx"
    shifted_output_model(exported.model_path, broken, "logits", 0.1)
    with pytest.raises(TfoptError, match="differs from torch by 0.1"):
        check_runs_with_and_without_past(source_model(ctx), broken)
    check_runs_with_and_without_past(source_model(ctx), exported.model_path)  # the real one passes
