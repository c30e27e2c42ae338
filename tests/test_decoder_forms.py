"""GPT-2 attention as ONNX Runtime's own GPT-2 tools write it, built here with onnx.helper (issue 17).

The form of the graphs ONNX Runtime's optimizer tests generate for GPT-2 (its
``gpt2_model_generator``): one stacked past ``[2, batch, heads, past, head size]`` split and
squeezed per layer, a constant causal buffer sliced by the key and query lengths, the causal
part applied as ``Where(causal, scores, -10000)`` and the padding mask added after it as
``(1 - mask) * -10000``, the output projection as a flattened Gemm, and no value_info at all.
tfopt must fuse it into one MultiHeadAttention and compute what ONNX Runtime computes on the
input, with and without past, on left-padded masks.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt.graph import count_ops, fuse_file, fuse_model
from tfopt.results import ModelInfo

HIDDEN, HEADS, MAX_POSITIONS = 16, 2, 32
HEAD_SIZE = HIDDEN // HEADS


def _gpt2_attention(
    fill: float, mask_first: bool = False, max_positions: int = MAX_POSITIONS, *, padding_mask: bool = True, buffer=np.tril
) -> onnx.ModelProto:
    """``padding_mask=False``: no ``input_mask`` input, the causal Where alone (GPT-2 exported without
    attention_mask); ``buffer`` builds the causal buffer (np.tril; anything else is a wrong mask)."""
    rng = np.random.default_rng(3)
    inits = []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(name, values):
        return const(name, values, np.int64)

    node = helper.make_node
    nodes = [
        node("Add", ["input_1", "input_2"], ["residual"]),
        node("LayerNormalization", ["residual", const("gamma", 1 + 0.1 * rng.normal(size=HIDDEN)), const("beta", 0.1 * rng.normal(size=HIDDEN))], ["ln"], axis=-1),
        node("MatMul", ["ln", const("w_qkv", 0.3 * rng.normal(size=(HIDDEN, 3 * HIDDEN)))], ["qkv_mm"]),
        node("Add", ["qkv_mm", const("b_qkv", 0.1 * rng.normal(size=3 * HIDDEN))], ["qkv"]),
        node("Split", ["qkv", ints("thirds", [HIDDEN] * 3)], ["q", "k", "v"], axis=2),
    ]
    for name in ("q", "k", "v"):
        nodes += [
            node("Reshape", [name, ints(f"{name}_heads_shape", [0, 0, HEADS, HEAD_SIZE])], [f"{name}_split"]),
            node("Transpose", [f"{name}_split"], [f"{name}_heads"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        node("Split", ["past", ints("halves", [1, 1])], ["past_k5", "past_v5"], axis=0),
        node("Squeeze", ["past_k5", ints("axis0", [0])], ["past_k"]),
        node("Squeeze", ["past_v5", "axis0"], ["past_v"]),
        node("Concat", ["past_k", "k_heads"], ["key"], axis=-2),
        node("Concat", ["past_v", "v_heads"], ["value"], axis=-2),
        node("Unsqueeze", ["key", "axis0"], ["key5"]),
        node("Unsqueeze", ["value", "axis0"], ["value5"]),
        node("Concat", ["key5", "value5"], ["present"], axis=0),
        node("Transpose", ["key"], ["key_t"], perm=[0, 1, 3, 2]),
        node("MatMul", ["q_heads", "key_t"], ["qk"]),
        node("Div", ["qk", const("sqrt_head", np.sqrt(HEAD_SIZE))], ["scores"]),
        # causal: rows total - sequence .. total of the buffer, its first total columns
        node("Shape", ["q_heads"], ["q_shape"]),
        node("Slice", ["q_shape", ints("minus2", [-2]), ints("minus1", [-1]), "axis0"], ["q_len"]),
        node("Shape", ["key"], ["k_shape"]),
        node("Slice", ["k_shape", "minus2", "minus1", "axis0"], ["k_len"]),
        node("Sub", ["k_len", "q_len"], ["first_row"]),
        node("Slice", [const("causal", buffer(np.ones((1, 1, max_positions, max_positions))).astype(np.uint8), np.uint8), "first_row", "k_len", ints("axis2", [2])], ["rows"]),
        node("Slice", ["rows", ints("zero", [0]), "k_len", ints("axis3", [3])], ["causal_window"]),
        node("Cast", ["causal_window"], ["keep"], to=TensorProto.BOOL),
        node("Where", ["keep", "scores", const("fill", fill)], ["causal_scores"]),
    ]
    if padding_mask:
        nodes += [
            node("Unsqueeze", ["input_mask", ints("axes12", [1, 2])], ["mask4"]),
            node("Cast", ["mask4"], ["mask_float"], to=TensorProto.FLOAT),
            node("Sub", [const("one", 1.0), "mask_float"], ["dropped"]),
            node("Mul", ["dropped", const("minus_big", -10000.0)], ["additive"]),
            node("Add", ["additive", "causal_scores"] if mask_first else ["causal_scores", "additive"], ["masked"]),
        ]
    nodes += [
        node("Softmax", ["masked" if padding_mask else "causal_scores"], ["probs"], axis=3),
        node("MatMul", ["probs", "value"], ["context"]),
        node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
        node("Reshape", ["context_t", ints("merged_shape", [0, 0, HIDDEN])], ["merged"]),
        node("Reshape", ["merged", ints("flat", [-1, HIDDEN])], ["flat_merged"]),
        node("Gemm", ["flat_merged", const("w_out", 0.3 * rng.normal(size=(HIDDEN, HIDDEN))), const("b_out", 0.1 * rng.normal(size=HIDDEN))], ["projected_flat"]),
        node("Shape", ["merged"], ["merged_shape_dyn"]),
        node("Reshape", ["projected_flat", "merged_shape_dyn"], ["projected"]),
        node("Add", ["projected", "residual"], ["output"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
        helper.make_tensor_value_info("input_2", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
        helper.make_tensor_value_info("input_mask", TensorProto.INT64, ["batch", "past + sequence"]),
        helper.make_tensor_value_info("past", TensorProto.FLOAT, [2, "batch", HEADS, "past", HEAD_SIZE]),
    ]
    if not padding_mask:
        inputs.pop(2)
    outputs = [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
        helper.make_tensor_value_info("present", TensorProto.FLOAT, [2, "batch", HEADS, "past + sequence", HEAD_SIZE]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "gpt2_attention", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    return model


def _feed(batch, past, sequence, rng):
    mask = np.ones((batch, past + sequence), np.int64)
    for row in range(1, batch):
        mask[row, : rng.integers(0, past + sequence)] = 0  # left padding, the last slot kept
    return {
        "input_1": rng.normal(size=(batch, sequence, HIDDEN)).astype(np.float32),
        "input_2": rng.normal(size=(batch, sequence, HIDDEN)).astype(np.float32),
        "input_mask": mask,
        "past": rng.normal(size=(2, batch, HEADS, past, HEAD_SIZE)).astype(np.float32),
    }


@pytest.mark.parametrize("mask_first", [False, True], ids=["scores-first", "mask-first"])
@pytest.mark.parametrize("fill", [-10000.0, float(np.finfo(np.float32).min)], ids=["ort-1e4", "float-min"])
def test_onnx_runtimes_gpt2_attention_form_fuses_and_matches(fill, mask_first):
    original = _gpt2_attention(fill, mask_first)
    model = ir.serde.deserialize_model(original)
    fuse_model(model, ModelInfo(model_type="gpt2", num_layers=1))
    assert count_ops(model).get("MultiHeadAttention", 0) == 1 and "Softmax" not in count_ops(model)
    fused = ir.serde.serialize_model(model)
    onnx.checker.check_model(fused)  # every output typed (the presents came from untyped values)
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (original, fused)]
    rng = np.random.default_rng(0)
    for batch, past, sequence in ((1, 0, 5), (3, 4, 1), (2, 3, 4)):
        feed = _feed(batch, past, sequence, rng)
        expected, actual = (session.run(None, feed) for session in sessions)
        valid = feed["input_mask"][:, -sequence:].astype(bool)  # padded queries are free
        np.testing.assert_allclose(actual[0][valid], expected[0][valid], atol=2e-5, rtol=0)
        np.testing.assert_allclose(actual[1], expected[1], atol=1e-6, rtol=0)


def test_a_short_causal_buffer_is_probed_and_validated_within_it(tmp_path):
    """An 8-position causal buffer (ONNX Runtime's GPT-2 test graphs): the graph cannot run longer
    lengths, so the mask probe and validation's feeds stay within it, and the model is still compared."""
    source = tmp_path / "gpt2_short.onnx"
    onnx.save(_gpt2_attention(-10000.0, max_positions=8), source)
    result = fuse_file(source, tmp_path / "out.onnx", ModelInfo(model_type="gpt2", num_layers=1))
    assert result.op_counts.get("MultiHeadAttention", 0) == 1
    assert result.validation.passed and result.validation.feeds > 0, result.validation  # compared, not "parity not checked"


def test_shapes_flow_past_a_layer_norm_onnx_has_no_schema_for():
    """Below opset 17 LayerNormalization is ONNX Runtime's op only: onnx infers nothing after it, tfopt gives it its input's shape."""
    from tfopt.graph.passes import prepare

    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("Relu", ["ln"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.ones(HIDDEN, np.float32), "gamma"), numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "beta")]
    graph = helper.make_graph(
        nodes, "ln11", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]))
    prepare(model)
    relu = next(node for node in model.graph if node.op_type == "Relu")
    assert relu.outputs[0].shape is not None and relu.outputs[0].shape.rank() == 3


@pytest.mark.parametrize("buffer", [np.tril, lambda ones: np.tril(ones, k=-1)], ids=["causal", "strictly-below-diagonal"])
def test_a_causal_mask_without_a_padding_input_is_proved_causal(buffer):
    """GPT-2 exported without attention_mask: the mask comes from shapes alone; it fuses only if exactly causal."""
    original = _gpt2_attention(-10000.0, padding_mask=False, buffer=buffer)
    model = ir.serde.deserialize_model(original)
    fuse_model(model, ModelInfo(model_type="gpt2", num_layers=1))
    causal = buffer is np.tril
    assert count_ops(model).get("MultiHeadAttention", 0) == (1 if causal else 0)
    if causal:
        fused = ir.serde.serialize_model(model)
        sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (original, fused)]
        rng = np.random.default_rng(1)
        for batch, past, sequence in ((1, 0, 5), (2, 3, 2)):
            feed = _feed(batch, past, sequence, rng)
            del feed["input_mask"]
            expected, actual = (session.run(None, feed) for session in sessions)
            np.testing.assert_allclose(actual[0], expected[0], atol=2e-5, rtol=0)
