"""GPTQ rounding for MatMulNBits: ONNX Runtime's layout, less output error than nearest, end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt import precision
from tfopt.bench import ort_session
from tfopt.errors import TfoptError
from tfopt.gptq import pack_matmul_nbits, round_weight


def _onnxruntime_nearest(weight: np.ndarray, bits: int, block_size: int):
    """ONNX Runtime's own block quantizer (the C++ kernel its MatMulNBits quantizer calls)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    k, n = weight.shape
    blocks = -(-k // block_size)
    per_byte = 8 // bits
    packed = np.zeros((n, blocks, block_size // per_byte), np.uint8)
    scales = np.zeros((n, blocks), np.float32)
    zeros = np.zeros((n, -(-blocks // per_byte)), np.uint8)
    padded = np.pad(weight, ((0, blocks * block_size - k), (0, 0)))
    (quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits)(packed, padded, scales, zeros, block_size, n, k, False)
    return packed, scales, zeros


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k, n, block_size", [(64, 24, 32), (96, 10, 32), (80, 7, 16), (48, 5, 32), (128, 33, 64)])
def test_nearest_rounding_is_onnxruntime_layout_byte_for_byte(bits, k, n, block_size):
    """Odd block counts (a spare zero-point nibble) and K not a multiple of the block (padding rows) included."""
    weight = np.random.default_rng(k * n + bits).normal(size=(k, n)).astype(np.float32)
    ours = pack_matmul_nbits(*round_weight(weight, None, bits=bits, block_size=block_size), bits=bits, block_size=block_size)
    theirs = _onnxruntime_nearest(weight, bits, block_size)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-6)
    np.testing.assert_array_equal(ours[2], theirs[2])


def _dequantized(codes, scales, zeros, block_size, k):
    expand = lambda a: np.repeat(a.astype(np.float64), block_size, axis=0)  # noqa: E731
    return ((codes.astype(np.float64) - expand(zeros)) * expand(scales))[:k]


def _correlated_inputs(rows: int, k: int, seed: int) -> np.ndarray:
    """Activations with uneven channel scales and correlated channels (one fixed distribution per K),
    as after a LayerNorm; ``seed`` picks the rows."""
    shape = np.random.default_rng(k)
    mixing = shape.normal(size=(k, k)) * 0.3 + np.eye(k)
    scales = shape.lognormal(0.0, 1.0, size=k)
    return (np.random.default_rng(seed).normal(size=(rows, k)) @ mixing) * scales


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_moves_the_output_less_than_nearest(bits):
    k, n, block_size = 96, 48, 32
    weight = np.random.default_rng(1).normal(size=(k, n))
    calibration, held_out = _correlated_inputs(2048, k, 2), _correlated_inputs(512, k, 3)
    nearest = _dequantized(*round_weight(weight, None, bits=bits, block_size=block_size), block_size, k)
    gptq = _dequantized(*round_weight(weight, calibration.T @ calibration, bits=bits, block_size=block_size), block_size, k)
    error = lambda q: np.linalg.norm(held_out @ (q - weight))  # noqa: E731
    assert error(gptq) < 0.8 * error(nearest)
    # each block's codes still span its grid: nothing left the 2^bits levels
    codes, _, _ = round_weight(weight, calibration.T @ calibration, bits=bits, block_size=block_size)
    assert codes.max() <= 2**bits - 1


def _linear_model(path, weight: np.ndarray):
    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("target", ["int4", "int8"])
def test_calibrated_conversion_runs_on_onnxruntime_and_beats_nearest(tmp_path, monkeypatch, target):
    """What GPTQ wrote is what ONNX Runtime's MatMulNBits computes (fp32 compute, so exactly comparable),
    and it is closer to the fp32 model than round-to-nearest on inputs like the calibration's."""
    monkeypatch.setattr(precision, "INT4_ACCURACY_LEVEL", 0)
    k, n = 96, 40
    weight = np.random.default_rng(4).normal(size=(k, n)).astype(np.float32)
    source = tmp_path / "linear.onnx"
    _linear_model(source, weight)
    calibration_rows, held_out = _correlated_inputs(1024, k, 5).astype(np.float32), _correlated_inputs(256, k, 6).astype(np.float32)
    calls = []

    def calibration(session):
        calls.append(session)
        for chunk in np.split(calibration_rows, 4):
            yield {"x": chunk}

    options = {"int8_method": "weight_only"} if target == "int8" else {}
    gptq = precision.convert(source, target, tmp_path / "gptq.onnx", calibration=calibration, **options)
    nearest = precision.convert(source, target, tmp_path / "nearest.onnx", **options)
    assert len(calls) == 1 and any("GPTQ, calibrated on 1024 activation rows" in note for note in gptq.notes)
    assert not any("GPTQ" in note for note in nearest.notes)
    assert not list(tmp_path.glob("*.probe.onnx")) and sorted(p.name for p in tmp_path.iterdir()) == ["gptq.onnx", "linear.onnx", "nearest.onnx"]
    bits = 4 if target == "int4" else 8
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(gptq.model_path)).graph.initializer}
    codes, scales, zeros = round_weight(weight, calibration_rows.astype(np.float64).T @ calibration_rows, bits=bits, block_size=32)
    expected = held_out.astype(np.float64) @ _dequantized(codes, scales, zeros, 32, k)
    got = ort_session(gptq.model_path).run(None, {"x": held_out})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert written["w_Q%d" % bits].dtype == np.uint8
    reference = held_out @ weight
    error = lambda path: np.linalg.norm(ort_session(path).run(None, {"x": held_out})[0] - reference)  # noqa: E731
    assert error(gptq.model_path) < 0.9 * error(nearest.model_path)


def test_calibration_is_refused_for_dynamic_int8(tmp_path):
    source = tmp_path / "linear.onnx"
    _linear_model(source, np.ones((32, 8), np.float32))
    with pytest.raises(TfoptError, match="GPTQ.*not dynamic int8"):
        precision.convert(source, "int8", tmp_path / "x.onnx", calibration=lambda session: iter(()))
    assert not (tmp_path / "x.onnx").exists()


def test_empty_calibration_is_one_line_and_writes_nothing(tmp_path):
    source = tmp_path / "linear.onnx"
    _linear_model(source, np.ones((32, 8), np.float32))
    with pytest.raises(TfoptError, match="calibration gave no inputs"):
        precision.convert(source, "int4", tmp_path / "x.onnx", calibration=lambda session: iter(()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linear.onnx"]


def test_calibration_is_skipped_when_there_is_nothing_to_round(tmp_path):
    """A MatMul of two activations has no constant weight: no probe run, no GPTQ note."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "no-weights",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 4]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    source = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)

    def calibration(session):
        raise AssertionError("calibration data asked for a model with no weights")

    result = precision.convert(source, "int4", tmp_path / "plain.int4.onnx", calibration=calibration)
    assert not any("GPTQ" in note for note in result.notes)
    assert [node.op_type for node in onnx.load(str(result.model_path)).graph.node] == ["MatMul"]
