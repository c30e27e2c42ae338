"""bert_keras: keras-hub BertBackbone (Keras 3) and Hugging Face TF BERT (tf_keras) -> ONNX, parity with Keras."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import tfopt_bert_keras
from tfopt.errors import TfoptError
from tfopt.verify import TOLERANCES

KERAS_HUB_INPUTS = ["token_ids", "padding_mask", "segment_ids"]
HF_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def test_keras_hub_dict_inputs_become_named_graph_inputs(keras_hub_run):
    _, exported = keras_hub_run
    assert list(exported.io.inputs) == KERAS_HUB_INPUTS
    assert set(exported.io.outputs) == {"sequence_output", "pooled_output"}
    assert exported.io.dynamic_axes["token_ids"] == {0: "batch", 1: "sequence"}
    assert exported.io.dynamic_axes["sequence_output"] == {0: "batch", 1: "sequence"}
    assert (exported.info.model_type, exported.info.num_heads, exported.info.hidden_size, exported.info.num_layers) == ("bert_keras", 4, 64, 2)
    assert {o.domain: o.version for o in onnx.load(str(exported.model_path)).opset_import}[""] == 17


def test_hf_keras_model_keeps_hugging_face_names(hf_keras_run):
    _, exported = hf_keras_run
    assert list(exported.io.inputs) == HF_INPUTS
    assert exported.io.outputs == ["last_hidden_state", "pooler_output"]
    assert exported.info.model_type == "bert_keras"


@pytest.mark.parametrize("run_name", ["keras_hub_run", "hf_keras_run"])
def test_onnx_matches_keras_on_padded_inputs(run_name, request):
    ctx, exported = request.getfixturevalue(run_name)
    inputs = tfopt_bert_keras.make_dummy_inputs_hook(ctx, exported)
    mask_name = list(exported.io.inputs)[1]
    assert len({feed[mask_name].shape for feed in inputs}) >= 2 and any(not feed[mask_name].all() for feed in inputs)
    result = tfopt_bert_keras.verify_hook(ctx, exported, exported.model_path, inputs)
    assert result.passed, result.overall
    assert result.overall.max_abs <= TOLERANCES["fp32"] and result.reference == "keras"
    assert len({case["output"] for case in result.cases}) == 2  # hidden states and pooled output both compared


def test_keras_own_export_route_matches_and_leaves_tf2onnx_unpatched(keras_file, tmp_path, keras_run_context):
    import tf2onnx

    fold_before = tf2onnx.tfonnx.rewrite_constant_fold
    ctx = keras_run_context(keras_file, tmp_path, route="keras")
    exported = tfopt_bert_keras.export_hook(ctx)
    assert exported.exporter == "tf2onnx:keras-export"
    assert set(exported.io.inputs) == set(KERAS_HUB_INPUTS)
    assert tf2onnx.tfonnx.rewrite_constant_fold is fold_before
    result = tfopt_bert_keras.verify_hook(ctx, exported, exported.model_path, tfopt_bert_keras.make_dummy_inputs_hook(ctx, exported))
    assert result.passed, result.overall


def test_verify_fails_on_a_perturbed_model(keras_hub_run, tmp_path):
    ctx, exported = keras_hub_run
    model = onnx.load(str(exported.model_path))
    for weight in model.graph.initializer:  # every float matrix a little off
        if weight.data_type == onnx.TensorProto.FLOAT and len(weight.dims) == 2:
            values = onnx.numpy_helper.to_array(weight)
            noise = np.random.default_rng(0).normal(0.0, 0.05, values.shape).astype(np.float32)
            weight.CopyFrom(onnx.numpy_helper.from_array(values + noise, weight.name))
    onnx.save(model, str(tmp_path / "perturbed.onnx"))
    result = tfopt_bert_keras.verify_hook(ctx, exported, tmp_path / "perturbed.onnx", tfopt_bert_keras.make_dummy_inputs_hook(ctx, exported))
    assert not result.passed and result.overall.max_abs > TOLERANCES["fp32"]


def test_benchmark_rows_for_keras_and_each_onnx_model(keras_hub_run):
    ctx, exported = keras_hub_run
    result = tfopt_bert_keras.benchmark_hook(ctx, exported, {"ort:raw": exported.model_path, "ort:copy": exported.model_path})
    assert [row.engine for row in result.rows] == ["tf:eager", "tf:function", "ort:raw", "ort:copy"]
    assert all(row.p50_ms > 0 and row.throughput > 0 for row in result.rows)


def test_a_layer_tf2onnx_cannot_convert_is_named(tmp_path, keras_run_context):
    import keras
    import tensorflow as tf

    class OddLayer(keras.layers.Layer):
        def call(self, x):
            return tf.math.lgamma(x)

    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embedded = keras.layers.Embedding(50, 8, name="token_embedding")(token_ids)
    model = keras.Model({"token_ids": token_ids}, OddLayer(name="odd_layer")(embedded))
    for route in ("tf2onnx", "keras"):
        with pytest.raises(TfoptError, match=r"cannot convert op.* Lgamma in layer 'odd_layer'") as error:
            tfopt_bert_keras.export_model(keras_run_context(None, tmp_path / route, route=route), model, "odd")
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "make_source, options, message",
    [
        (lambda tmp: tmp / "missing.keras", {}, "no such file"),
        (lambda tmp: (tmp / "model.txt").write_text("x") and tmp / "model.txt", {}, "not a Keras model file"),
        (lambda tmp: (tmp / "broken.keras").write_bytes(b"not a zip") and tmp / "broken.keras", {}, "cannot load the Keras model"),
        (lambda tmp: tmp, {}, "not a Hugging Face TF model"),
        (lambda tmp: None, {"route": "keras2onnx"}, "unknown route"),
    ],
    ids=["missing", "wrong-suffix", "corrupt-file", "plain-dir", "unknown-route"],
)
def test_bad_sources_give_a_one_line_error(make_source, options, message, tmp_path, keras_run_context):
    with pytest.raises(TfoptError, match=message) as error:
        tfopt_bert_keras.export_hook(keras_run_context(make_source(tmp_path), tmp_path / "work", **options))
    assert "\n" not in str(error.value)


def test_keras_route_refuses_tf_keras_models(tiny_tf_bert, tmp_path, keras_run_context):
    with pytest.raises(TfoptError, match="needs a Keras 3 model"):
        tfopt_bert_keras.export_model(keras_run_context(None, tmp_path, route="keras"), tiny_tf_bert, "hf")
