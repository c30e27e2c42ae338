"""bert_tf: SavedModel and Hugging Face TF directories -> ONNX, parity with TF, errors, benchmark."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import tfopt_bert_tf
from tfopt.errors import TfoptError
from tfopt.verify import TOLERANCES
from tfopt_bert_tf.models import TINY_CONFIG, TINY_NAME, load_source

HF_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def test_savedmodel_export_keeps_names_and_dynamic_axes(savedmodel_run):
    _, exported = savedmodel_run
    model = onnx.load(str(exported.model_path))
    assert list(exported.io.inputs) == HF_INPUTS
    assert set(exported.io.inputs.values()) == {"int32"}  # the signature's dtype, as the source has it
    assert exported.io.outputs == ["last_hidden_state", "pooler_output"]
    for name in HF_INPUTS:
        assert exported.io.dynamic_axes[name] == {0: "batch", 1: "sequence"}
    assert exported.io.dynamic_axes["last_hidden_state"] == {0: "batch", 1: "sequence"}
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert exported.exporter == "tf2onnx"
    assert (exported.info.model_type, exported.info.num_heads, exported.info.hidden_size, exported.info.num_layers) == (
        "bert_tf", TINY_CONFIG["num_attention_heads"], TINY_CONFIG["hidden_size"], TINY_CONFIG["num_hidden_layers"])
    op_types = {node.op_type for node in model.graph.node}
    assert "Erfc" not in op_types and "Erf" in op_types  # exact gelu converted through the Erfc handler
    assert not list(exported.model_path.parent.glob(".*tmp"))  # the atomic write left no temp file


@pytest.mark.parametrize("run_name", ["savedmodel_run", "hf_dir_run"])
def test_onnx_matches_tensorflow_on_padded_inputs(run_name, request):
    ctx, exported = request.getfixturevalue(run_name)
    inputs = tfopt_bert_tf.make_dummy_inputs_hook(ctx, exported)
    shapes = {feed["input_ids"].shape for feed in inputs}
    assert len(shapes) >= 2 and any(not feed["attention_mask"].all() for feed in inputs)
    result = tfopt_bert_tf.verify_hook(ctx, exported, exported.model_path, inputs)
    assert result.passed, result.overall
    assert result.overall.max_abs <= TOLERANCES["fp32"] and result.overall.nan_count == 0
    assert {case["output"] for case in result.cases} == {"last_hidden_state", "pooler_output"}
    assert result.reference == "tensorflow"


def test_dummy_inputs_look_like_padded_text(savedmodel_run):
    ctx, exported = savedmodel_run
    ctx.options.update(batch_sizes=[1, 4], sequence_lengths=[5, 9])
    try:
        inputs = tfopt_bert_tf.make_dummy_inputs_hook(ctx, exported)
    finally:
        del ctx.options["batch_sizes"], ctx.options["sequence_lengths"]
    assert [feed["input_ids"].shape for feed in inputs] == [(1, 5), (1, 9), (4, 5), (4, 9)]
    for feed in inputs:
        ids, mask, segments = feed["input_ids"], feed["attention_mask"].astype(bool), feed["token_type_ids"]
        assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < TINY_CONFIG["vocab_size"]
        assert mask[0].all()  # row 0 full, later rows right-padded
        assert (np.diff(mask.astype(int), axis=1) <= 0).all()
        assert (ids[~mask] == TINY_CONFIG["pad_token_id"]).all() and (ids[mask] != TINY_CONFIG["pad_token_id"]).all()
        assert (segments[~mask] == 0).all()
    assert not inputs[-1]["attention_mask"].all()


def test_verify_fails_on_a_perturbed_model(savedmodel_run, tmp_path):
    ctx, exported = savedmodel_run
    model = onnx.load(str(exported.model_path))
    weight = max((t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT), key=lambda t: np.prod(t.dims))
    values = onnx.numpy_helper.to_array(weight)
    # noise, not a constant shift: LayerNorm would cancel a shift of an embedding table
    values = values + np.random.default_rng(0).normal(0.0, 0.05, values.shape).astype(np.float32)
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    perturbed = tmp_path / "perturbed.onnx"
    onnx.save(model, str(perturbed))
    result = tfopt_bert_tf.verify_hook(ctx, exported, perturbed, tfopt_bert_tf.make_dummy_inputs_hook(ctx, exported))
    assert not result.passed and result.overall.max_abs > TOLERANCES["fp32"]


def test_benchmark_rows_for_tf_and_each_onnx_model(hf_dir_run, savedmodel_run):
    ctx, exported = hf_dir_run
    result = tfopt_bert_tf.benchmark_hook(ctx, exported, {"ort:raw": exported.model_path})
    assert [row.engine for row in result.rows] == ["tf:eager", "tf:function", "ort:raw"]
    assert all(row.p50_ms > 0 and (row.batch_size, row.sequence_length) == (1, 8) for row in result.rows)
    ctx, exported = savedmodel_run  # a SavedModel signature is a graph: no eager row
    result = tfopt_bert_tf.benchmark_hook(ctx, exported, {"ort:raw": exported.model_path})
    assert [row.engine for row in result.rows] == ["tf:function", "ort:raw"]


def test_builtin_tiny_model_is_the_default():
    source = load_source(None)
    assert source.name == TINY_NAME and source.input_names == tuple(HF_INPUTS)
    assert source.info.num_layers == 2 and source.eager is not None
    biases = [w.numpy() for w in source.model.weights if "bias" in w.name and len(w.shape) == 1]
    assert len({b.tobytes() for b in biases}) == len(biases)  # perturbed: no two biases alike


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda tmp: tmp / "missing", "no such directory"),
        (lambda tmp: tmp, "not a SavedModel"),
        (lambda tmp: (tmp / "model.onnx").write_bytes(b"x") and tmp / "model.onnx", "not a directory"),
    ],
    ids=["missing-dir", "empty-dir", "a-file"],
)
def test_bad_sources_give_a_one_line_error(make_source, message, tmp_path, tf_run_context):
    with pytest.raises(TfoptError, match=message) as error:
        tfopt_bert_tf.export_hook(tf_run_context(make_source(tmp_path), tmp_path / "work"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "work" / "exported.onnx").exists()


def test_savedmodel_with_an_unconvertible_op_names_it(tmp_path, tf_run_context):
    import tensorflow as tf

    class OddEncoder(tf.Module):
        """Embeds ids, then applies lgamma, which tf2onnx has no handler for."""

        def __init__(self):
            super().__init__()
            self.word_embeddings = tf.Variable(tf.random.uniform([50, 8], 1.0, 2.0), name="word_embeddings")

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids")])
        def serve(self, input_ids):
            return {"last_hidden_state": tf.math.lgamma(tf.gather(self.word_embeddings, input_ids))}

    module = OddEncoder()
    tf.saved_model.save(module, str(tmp_path / "odd"), signatures={"serving_default": module.serve})
    with pytest.raises(TfoptError, match=r"cannot convert op Lgamma") as error:
        tfopt_bert_tf.export_hook(tf_run_context(tmp_path / "odd", tmp_path / "work"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "work" / "exported.onnx").exists()


def test_verify_refuses_a_model_that_lost_an_output(savedmodel_run, tmp_path):
    ctx, exported = savedmodel_run
    model = onnx.load(str(exported.model_path))
    kept = [output for output in model.graph.output if output.name != "pooler_output"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(tmp_path / "no_pooler.onnx"))
    with pytest.raises(TfoptError, match="lacks output.* pooler_output"):
        tfopt_bert_tf.verify_hook(ctx, exported, tmp_path / "no_pooler.onnx", tfopt_bert_tf.make_dummy_inputs_hook(ctx, exported))
