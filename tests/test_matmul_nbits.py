"""tfopt's own MatMulNBits writer: ONNX Runtime's quantizer's bytes, one weight at a time, nothing kept mapped."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt import matmul_nbits, precision
from tfopt.bench import ort_session
from tfopt.graph.io import load_model, save_model


def _model(path, *, external: bool) -> dict[str, np.ndarray]:
    """Three linears: K a whole number of blocks, K not (padding rows), a weight read twice; the last computes the output."""
    rng = np.random.default_rng(0)
    weights = {
        "w_first": rng.normal(size=(64, 48)).astype(np.float32),
        "w_odd": rng.normal(size=(48, 40)).astype(np.float32),  # K = 48: one and a half blocks of 32
        "w_head": rng.normal(size=(40, 24)).astype(np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w_first"], ["a"], name="first"),
            helper.make_node("MatMul", ["x", "w_first"], ["a2"], name="first_again"),
            helper.make_node("Add", ["a", "a2"], ["a3"]),
            helper.make_node("MatMul", ["a3", "w_odd"], ["b"], name="odd"),
            helper.make_node("MatMul", ["b", "w_head"], ["y"], name="head"),
        ],
        "linears",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 24])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True, location=path.name + ".data",
              size_threshold=0)
    return weights


def _onnxruntime_quantizer(source, target, bits: int) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(str(source), bits=bits, block_size=32, is_symmetric=False, accuracy_level=4,
                                     op_types_to_quantize=("MatMul",))
    quantizer.process()
    quantizer.model.save_model_to_file(str(target))


@pytest.mark.parametrize("bits", [4, 8])
def test_same_bytes_and_nodes_as_onnxruntime_quantizer(tmp_path, bits):
    _model(tmp_path / "fp32.onnx", external=False)
    _onnxruntime_quantizer(tmp_path / "fp32.onnx", tmp_path / "ort.onnx", bits)
    model = load_model(tmp_path / "fp32.onnx")
    assert matmul_nbits.quantize_matmuls(model, bits=bits, block_size=32, accuracy_level=4) == 4
    save_model(model, tmp_path / "tfopt.onnx")
    ours, theirs = onnx.load(str(tmp_path / "tfopt.onnx")), onnx.load(str(tmp_path / "ort.onnx"))
    ours_init = {t.name: numpy_helper.to_array(t) for t in ours.graph.initializer}
    theirs_init = {t.name: numpy_helper.to_array(t) for t in theirs.graph.initializer}
    # ONNX Runtime's quantizer writes a shared weight's tensors once per reader; tfopt once
    assert set(ours_init) == set(theirs_init) and len(ours_init) == 9
    for name, array in theirs_init.items():
        assert ours_init[name].dtype == array.dtype and ours_init[name].shape == array.shape, name
        np.testing.assert_array_equal(ours_init[name], array, err_msg=name)
    nodes = lambda m: sorted((n.name, n.op_type, tuple(n.input), tuple(sorted((a.name, a.i) for a in n.attribute))) for n in m.graph.node)  # noqa: E731
    assert nodes(ours) == nodes(theirs)
    feed = {"x": np.random.default_rng(1).normal(size=(5, 64)).astype(np.float32)}
    np.testing.assert_array_equal(ort_session(tmp_path / "tfopt.onnx").run(None, feed)[0],
                                  ort_session(tmp_path / "ort.onnx").run(None, feed)[0])


def test_weights_are_quantized_when_written_once_each_and_then_released(tmp_path):
    weights = _model(tmp_path / "fp32.onnx", external=True)
    model = load_model(tmp_path / "fp32.onnx")
    sources = {name: value.const_value for name, value in model.graph.initializers.items()}
    assert all(isinstance(tensor, ir.ExternalTensor) for tensor in sources.values())
    calls = []

    def rounding(name, array):
        calls.append(name)
        np.testing.assert_array_equal(array, weights[name])
        return matmul_nbits.nearest(array, 4, 32)

    matmul_nbits.quantize_matmuls(model, bits=4, block_size=32, accuracy_level=0, rounding=rounding,
                                  include=lambda node: node.name != "head")
    assert calls == []  # nothing computed before the model is written
    save_model(model, tmp_path / "int4.onnx", external=True)
    assert sorted(calls) == ["w_first", "w_odd"]  # three tensors each, one computation each; the head left fp32
    assert all(tensor.raw is None for tensor in sources.values())  # no weight of the input stays mapped
    written = onnx.load(str(tmp_path / "int4.onnx"))
    assert [n.op_type for n in written.graph.node].count("MatMulNBits") == 3
    assert "w_head" in {t.name for t in written.graph.initializer} and "w_first" not in {t.name for t in written.graph.initializer}


def test_conversion_output_matches_dequantized_weights(tmp_path):
    """The int4 model computes x @ dequantize(W): checked against numpy, not against the code under test."""
    weights = _model(tmp_path / "fp32.onnx", external=True)
    result = precision.convert(tmp_path / "fp32.onnx", "int4", tmp_path / "out.onnx", lm_head="fp32")
    assert any("LM head kept fp32" in note for note in result.notes)
    feed = {"x": np.random.default_rng(2).normal(size=(3, 64)).astype(np.float32)}

    def dequantized(weight):
        k = weight.shape[0]
        padded = np.pad(weight, ((0, -k % 32), (0, 0))).reshape(-1, 32, weight.shape[1])
        low, high = np.minimum(padded.min(axis=1, keepdims=True), 0), np.maximum(padded.max(axis=1, keepdims=True), 0)
        scale = np.where(high > low, (high - low) / 15, 1.0)
        zero = np.clip(np.round(-low / scale), 0, 15)
        codes = np.clip(np.round(padded / scale) + zero, 0, 15)
        return ((codes - zero) * scale).reshape(-1, weight.shape[1])[:k]

    first = feed["x"] @ dequantized(weights["w_first"])
    expected = ((first + first) @ dequantized(weights["w_odd"])) @ weights["w_head"]
    got = ort_session(result.model_path).run(None, feed)[0]
    # accuracy_level 4 quantizes activations to int8 inside the kernel: close, not exact
    assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max()
    unquantized = ((feed["x"] @ weights["w_first"]) * 2 @ weights["w_odd"]) @ weights["w_head"]
    assert np.abs(got - unquantized).max() > 1e-3 * np.abs(unquantized).max()  # really quantized


def test_save_releases_every_mapped_input_weight(tmp_path):
    _model(tmp_path / "fp32.onnx", external=True)
    model = load_model(tmp_path / "fp32.onnx")
    tensors = [value.const_value for value in model.graph.initializers.values()]
    for tensor in tensors:
        tensor.numpy()  # mapped, as a fusion rule reading a weight leaves it
    assert all(tensor.raw is not None for tensor in tensors)
    save_model(model, tmp_path / "copy.onnx", external=True)
    assert all(tensor.raw is None for tensor in tensors)
    np.testing.assert_array_equal(tensors[0].numpy(), onnx.numpy_helper.to_array(onnx.load(str(tmp_path / "copy.onnx")).graph.initializer[0]))
