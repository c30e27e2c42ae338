"""bf16 for the CUDA target: the conversion's types, the schema check, and the CPU emulation's numbers."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt import bfloat16, precision
from tfopt.bench import ort_session
from tfopt.errors import TfoptError
from tfopt.graph.io import load_model, save_model


def _rounded(array) -> np.ndarray:
    return np.asarray(array, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def _linear_with_rotary_angles(path):
    """y = (x @ W + b) * cos(positions * freq): a linear, and a rotary-style angle table from int positions."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 6)).astype(np.float32)
    bias = rng.normal(size=(6,)).astype(np.float32)
    freq = np.float32(0.37)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"], name="linear"),
            helper.make_node("Add", ["xw", "b"], ["h"], name="bias"),
            helper.make_node("Cast", ["positions"], ["p"], to=TensorProto.FLOAT, name="positions_float"),
            helper.make_node("Mul", ["p", "freq"], ["angle"], name="angle"),
            helper.make_node("Cos", ["angle"], ["cos"], name="cos"),
            helper.make_node("Mul", ["h", "cos"], ["y"], name="apply"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8]),
         helper.make_tensor_value_info("positions", TensorProto.INT64, [3, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"), numpy_helper.from_array(np.array(freq), "freq")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return weight, bias, freq


def test_types_after_conversion(tmp_path):
    _linear_with_rotary_angles(tmp_path / "fp32.onnx")
    model = load_model(tmp_path / "fp32.onnx")
    bfloat16.convert(model)
    dtype = {v.name: v.dtype for node in model.graph for v in node.outputs}
    assert dtype["xw"] == dtype["h"] == dtype["y_bf16"] == ir.DataType.BFLOAT16
    assert dtype["angle"] == dtype["cos"] == ir.DataType.FLOAT  # the angles stay fp32, rounded once as cos
    assert model.graph.outputs[0].name == "y" and model.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT  # callers feed fp32 as before
    assert {v.const_value.dtype for n, v in model.graph.initializers.items() if n.startswith(("w", "b"))} == {ir.DataType.BFLOAT16}
    save_model(model, tmp_path / "bf16.onnx")
    assert bfloat16.structural_problems(tmp_path / "bf16.onnx") == []
    with pytest.raises(Exception):  # the reason emulation exists: no CPU kernel for bf16 MatMul
        ort_session(tmp_path / "bf16.onnx")


def test_emulation_rounds_where_the_bf16_model_stores(tmp_path):
    """Against numpy: every value the bf16 model stores rounded to bf16, the angle computed in fp32."""
    weight, bias, freq = _linear_with_rotary_angles(tmp_path / "fp32.onnx")
    result = precision.convert(tmp_path / "fp32.onnx", "bf16", tmp_path / "model.bf16.onnx")
    assert result.emulation_path == tmp_path / "model.bf16.emulated.onnx" and result.emulation_path.is_file()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8)).astype(np.float32)
    positions = np.array([[3], [1000], [4095]], np.int64)
    got = ort_session(result.emulation_path).run(None, {"x": x, "positions": positions})[0]
    xw = _rounded(_rounded(x) @ _rounded(weight))
    h = _rounded(xw + _rounded(bias))
    cos = _rounded(np.cos(positions.astype(np.float32) * freq))  # not cos of a rounded angle
    expected = _rounded(h * cos)
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())
    rounded_angle = _rounded(np.cos(_rounded(positions.astype(np.float32) * freq)))
    assert np.abs(rounded_angle - cos).max() > 0.05  # what keeping the angles fp32 is for


def test_schema_check_finds_mixed_and_unsupported_types(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"], name="mixed"), helper.make_node("Range", ["s", "l", "d"], ["r"], name="range")],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.BFLOAT16, [2]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [2]),
         *[helper.make_tensor_value_info(name, TensorProto.BFLOAT16, []) for name in ("s", "l", "d")]],
        [helper.make_tensor_value_info("c", TensorProto.BFLOAT16, [2]), helper.make_tensor_value_info("r", TensorProto.BFLOAT16, [None])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    problems = bfloat16.structural_problems(path)
    assert any(p.startswith("mixed: T bound to") for p in problems), problems
    assert any(p.startswith("range:") and "tensor(bfloat16)" in p for p in problems), problems


def test_llama_run_in_bf16_is_verified_through_its_emulation(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tfopt_llama")
    from click.testing import CliRunner

    from tfopt.cli import main

    run = CliRunner().invoke(main, ["run", "--plugin", "llama", "--model", "tiny-llama", "--precision", "bf16", "--profile",
                                    "--output", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    written = onnx.load(str(tmp_path / "out" / "optimized.bf16.onnx"))
    assert sum(t.data_type == TensorProto.BFLOAT16 for t in written.graph.initializer) >= 10
    assert "its CPU emulation" in run.output
    assert "not benchmarked or profiled: optimized.bf16.onnx is for the CUDA provider" in run.output  # timing an emulation says nothing
    again = CliRunner().invoke(main, ["verify", str(tmp_path / "out")])
    assert again.exit_code == 0 and "bf16" in again.output and "PASS" in again.output, again.output


def test_seq2seq_refuses_bf16_in_one_line(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tfopt_seq2seq")
    from tfopt.results import RunContext
    from tfopt_seq2seq.graphs import convert_pair

    ctx = RunContext(family="seq2seq", source="tiny-t5", work_dir=tmp_path, options={"precision": "bf16"})
    with pytest.raises(TfoptError, match="bf16"):
        convert_pair(ctx, None)
