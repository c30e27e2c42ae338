"""HF TFBertModel converted the way users convert it, then ``tfopt optimize``: every layer fused, still TF's numbers.

Users call tf2onnx themselves: ``from_function`` or ``from_keras`` on the model as built (its
own zero-initialized biases, which TF drops from the graph, so the head split reads
Tensordot's flattened 2-D product), one output, inputs in their signature's order, int32 or
int64, opsets 13 to 17; or tf2onnx's command line on a SavedModel. tfopt is told nothing
(heads and hidden size detected) or the right values; wrong values are refused in one line
before anything is written. Parity is checked against TF itself on padded batches.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from tfopt.cli import main
from tfopt.optimizer import optimize_model

CONFIG = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
HF_ORDER = ("input_ids", "attention_mask", "token_type_ids")
USER_ORDER = ("input_ids", "token_type_ids", "attention_mask")  # what the brief's users wrote
MIXED_ORDER = ("attention_mask", "input_ids", "token_type_ids")
FULLY_FUSED = {"EmbedLayerNormalization": 1, "MultiHeadAttention": 2, "SkipLayerNormalization": 4}
SHAPES = ((1, 5), (3, 9), (2, 16))


@pytest.fixture(scope="session")
def user_model():
    """A TFBertModel as users build one: random init, biases left at zero (not perturbed)."""
    import tensorflow as tf
    from transformers import BertConfig, TFBertModel

    tf.random.set_seed(5)
    model = TFBertModel(BertConfig(**CONFIG))
    ids = tf.constant([[1, 2, 3, 0]], tf.int32)
    model(input_ids=ids, attention_mask=tf.ones_like(ids), token_type_ids=tf.zeros_like(ids), training=False)
    assert all(not np.any(w.numpy()) for w in model.weights if "bias" in w.name and "LayerNorm" not in w.name)
    return model


def _convert(model, route: str, opset: int, dtype_name: str, order, path: Path) -> Path:
    import tensorflow as tf
    import tf2onnx
    import tf_keras

    from tfopt_bert_tf.erfc import register_erfc_handler

    register_erfc_handler()  # TF 2.16+ writes exact gelu with Erfc (docs: FACTS)
    dtype = getattr(tf, dtype_name)
    signature = [tf.TensorSpec([None, None], dtype, name=name) for name in order]
    if route == "from_function":

        @tf.function(input_signature=signature)
        def call(*inputs):
            return model(**dict(zip(order, inputs)), training=False).last_hidden_state

        tf2onnx.convert.from_function(call, input_signature=signature, opset=opset, output_path=str(path))
    else:
        inputs = [tf_keras.Input((None,), dtype=dtype, name=name) for name in order]
        keras_model = tf_keras.Model(inputs, model(**dict(zip(order, inputs))).last_hidden_state)
        tf2onnx.convert.from_keras(keras_model, input_signature=signature, opset=opset, output_path=str(path))
    return path


def _feeds(session: ort.InferenceSession, batch: int, sequence: int) -> dict:
    rng = np.random.default_rng(batch * 100 + sequence)
    ids = rng.integers(1, CONFIG["vocab_size"], size=(batch, sequence))
    mask = np.ones((batch, sequence), np.int64)
    if batch > 1:
        mask[1, sequence - sequence // 3 :] = 0  # right padding
    if batch > 2:
        mask[2, : sequence // 4] = 0  # left padding
    segments = np.zeros((batch, sequence), np.int64)
    segments[:, sequence // 2 :] = 1
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments}
    types = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}
    return {i.name: values[i.name].astype(types[i.type]) for i in session.get_inputs()}


def max_diff_vs_tf(model, path: Path) -> float:
    import tensorflow as tf

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, sequence in SHAPES:
        feeds = _feeds(session, batch, sequence)
        actual = session.run(None, feeds)[0]
        expected = model(**{k: tf.constant(v.astype(np.int32)) for k, v in feeds.items()}, training=False).last_hidden_state.numpy()
        valid = feeds["attention_mask"].astype(bool)
        assert actual.shape == expected.shape and np.isfinite(actual[valid]).all()
        worst = max(worst, float(np.abs(actual - expected)[valid].max()))
    return worst


def _fused_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _check_fully_fused_and_exact(model, exported: Path, tmp_path: Path, num_heads: int, hidden_size: int) -> None:
    optimized = optimize_model(exported, model_type="bert_tf", num_heads=num_heads, hidden_size=hidden_size)
    output = optimized.save_model_to_file(tmp_path / f"fused_{num_heads}.onnx")
    assert optimized.dropped_rules == [] and optimized.missing_fusions == []
    counts = _fused_counts(output)
    assert {op: counts.get(op, 0) for op in FULLY_FUSED} == FULLY_FUSED and "Softmax" not in counts, counts
    assert (optimized.stats.num_heads, optimized.stats.hidden_size) == (4, 64)
    assert max_diff_vs_tf(model, output) < 1e-4


CASES = [
    pytest.param("from_function", 17, "int32", USER_ORDER, id="from_function-opset17-int32"),
    pytest.param("from_keras", 13, "int64", MIXED_ORDER, id="from_keras-opset13-int64-mask_first"),
    pytest.param("from_function", 13, "int64", USER_ORDER, id="from_function-opset13-int64", marks=pytest.mark.slow),
    pytest.param("from_function", 15, "int64", MIXED_ORDER, id="from_function-opset15-int64", marks=pytest.mark.slow),
    pytest.param("from_function", 16, "int32", HF_ORDER, id="from_function-opset16-int32", marks=pytest.mark.slow),
    pytest.param("from_keras", 14, "int64", USER_ORDER, id="from_keras-opset14-int64", marks=pytest.mark.slow),
    pytest.param("from_keras", 17, "int32", USER_ORDER, id="from_keras-opset17-int32", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("route, opset, dtype_name, order", CASES)
def test_user_conversion_fuses_fully_with_heads_detected_or_given(user_model, route, opset, dtype_name, order, tmp_path):
    exported = _convert(user_model, route, opset, dtype_name, order, tmp_path / "model.onnx")
    assert max_diff_vs_tf(user_model, exported) < 1e-4  # the conversion itself is right
    for num_heads, hidden_size in ((0, 0), (4, 64)):
        _check_fully_fused_and_exact(user_model, exported, tmp_path, num_heads, hidden_size)


@pytest.mark.slow
def test_tf2onnx_command_line_on_a_saved_model_fuses_fully(user_model, tmp_path):
    user_model.save_pretrained(str(tmp_path / "hf"), saved_model=True)
    exported = tmp_path / "cli.onnx"
    # The command line as users run it, plus the Erfc handler it needs for TF >= 2.16's gelu.
    script = (
        "import runpy, sys; from tfopt_bert_tf.erfc import register_erfc_handler; register_erfc_handler(); "
        f"sys.argv = ['tf2onnx.convert', '--saved-model', {str(tmp_path / 'hf' / 'saved_model' / '1')!r}, '--opset', '15', "
        f"'--output', {str(exported)!r}]; runpy.run_module('tf2onnx.convert', run_name='__main__')"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=600)
    _check_fully_fused_and_exact(user_model, exported, tmp_path, 0, 0)


@pytest.fixture(scope="module")
def user_export(user_model, tmp_path_factory) -> Path:
    return _convert(user_model, "from_function", 17, "int32", USER_ORDER, tmp_path_factory.mktemp("user") / "model.onnx")


def test_optimize_command_fuses_the_user_export(user_model, user_export, tmp_path):
    output = tmp_path / "out.onnx"
    args = ["optimize", "--input", str(user_export), "--output", str(output), "--model_type", "bert_tf", "--num_heads", "4", "--hidden_size", "64"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "MultiHeadAttention 2" in result.output and "warning" not in result.output
    assert max_diff_vs_tf(user_model, output) < 1e-4


@pytest.mark.parametrize(
    "num_heads, hidden_size, message",
    [
        (8, 64, "num_heads=8 contradicts the model: its attention splits 64 values into 4 heads of 16"),
        (4, 128, "hidden_size=128 does not match the model"),
        (3, 64, "num_heads=3 does not divide hidden_size=64"),
    ],
)
def test_optimize_command_refuses_wrong_values_in_one_line(user_export, tmp_path, num_heads, hidden_size, message):
    output = tmp_path / "out.onnx"
    args = ["optimize", "--input", str(user_export), "--output", str(output), "--model_type", "bert_tf",
            "--num_heads", str(num_heads), "--hidden_size", str(hidden_size)]
    result = CliRunner().invoke(main, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and message in lines[0], result.output
    assert not list(tmp_path.glob("out.onnx*"))
