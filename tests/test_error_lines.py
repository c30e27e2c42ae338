"""Every error is one line of at most 200 characters in the user's terms; `tfopt -v` shows the quoted text whole (issue 17).

Another library's text reaches an error line through :func:`tfopt.errors.first_line`, which
summarizes it (ONNX Runtime's codes, the model path again, C++ locations and signatures go);
the CLI fits the line by shortening those quotes, never tfopt's own words.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tfopt.cli import main
from tfopt.console import ERROR_LINE_LIMIT, error_line
from tfopt.errors import QUOTE_LIMIT, first_line, fit_line, quoted_details, summarize

ORT_TEXTS = {
    "[ONNXRuntimeError] : 1 : FAIL : Load model from /tmp/some/where/model.onnx failed:Type Error: Type (tensor(float16)) "
    "of output arg (y) of node () does not match expected type (tensor(float)).":
        "'y' is declared float16 but computed as float",
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Add node. Name:'' Status Message: "
    "/onnxruntime_src/onnxruntime/core/providers/cpu/math/element_wise_ops.h:563 void "
    "onnxruntime::BroadcastIterator::Init(ptrdiff_t, ptrdiff_t) axis == 1 || axis == largest was false. "
    "Attempting to broadcast an axis by a dimension other than 1. 4 by 8\n":
        "Add node: dimensions 4 and 8 do not broadcast",
    "[ONNXRuntimeError] : 1 : FAIL : Load model from /tmp/m.onnx failed:/onnxruntime_src/onnxruntime/core/graph/graph.cc:1357 "
    "onnxruntime::Graph::Graph(const onnxruntime::Model&, onnx::GraphProto*, const std::unordered_map<std::__cxx11::"
    "basic_string<char>, int>&, onnxruntime::Version, onnxruntime::IOnnxRuntimeOpSchemaCollectionPtr, onnxruntime::Graph*, "
    "const onnxruntime::Node*, const onnxruntime::logging::Logger&, bool) [ONNXRuntimeError] : 1 : FAIL : "
    "tensorprotoutils.cc:2678 ConstantNodeProtoToTensorProto Constant node: c5 has no data attributes\n":
        "Constant node: c5 has no data attributes",
    "[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from /tmp/m.onnx failed:This is an invalid model. In Node, "
    '("mm", FuzzNoSuchOp, "", -1) : ("a": tensor(float),"b": tensor(float),) -> ("c",) , Error No Op registered for '
    "FuzzNoSuchOp with domain_version of 17":
        "FuzzNoSuchOp node 'mm': No Op registered for FuzzNoSuchOp with domain_version of 17",
    "[ONNXRuntimeError] : 1 : FAIL : Load model from /tmp/m.onnx failed:Type Error: Type parameter (T) of Optype (MatMul) "
    "bound to different types (tensor(float) and tensor(int32) in node (/encoder/key/MatMul).":
        "MatMul node '/encoder/key/MatMul': its inputs mix float and int32",
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Expand node. Name:'/model/Expand' Status "
    "Message: /onnxruntime_src/onnxruntime/core/framework/op_kernel.cc:87 virtual OrtValue* "
    "onnxruntime::OpKernelContext::OutputMLValue(int, const onnxruntime::TensorShape&) [ONNXRuntimeError] : 1 : FAIL : "
    "tensor.cc:57 CalculateTensorStorageSize Tensor shape.Size() must be >= 0":
        "Expand node '/model/Expand': Tensor shape.Size() must be >= 0",
    "Unrecognized attribute: fuzz for operator Relu\n\n==> Context: Bad node spec for node. Name: relu OpType: Relu":
        "Unrecognized attribute: fuzz for operator Relu",
}


@pytest.mark.parametrize("text", list(ORT_TEXTS), ids=range(len(ORT_TEXTS)))
def test_onnx_runtime_text_is_summarized_and_kept_whole_for_verbose(text):
    line = first_line(RuntimeError(text))
    assert line == ORT_TEXTS[text]
    assert quoted_details(f"model.onnx: ONNX Runtime cannot load it ({line})") == [text.strip()]


def test_a_summary_is_cut_at_a_word_to_the_quote_limit():
    line = summarize("word " * 100)
    assert len(line) <= QUOTE_LIMIT and line.endswith("word...")


def test_fit_line_shortens_quotes_not_tfopts_words():
    quote = first_line(RuntimeError("[ONNXRuntimeError] : 1 : FAIL : " + "a rather long explanation " * 4))
    message = f"/some/input.onnx: ONNX Runtime cannot load the model ({quote}); pass --no-validate to optimize it unchecked"
    fitted = fit_line(message, 150)
    assert len(fitted) <= 150 and fitted.startswith("/some/input.onnx: ONNX Runtime cannot load the model (a rather long")
    assert fitted.endswith("...); pass --no-validate to optimize it unchecked")
    assert len(error_line(message * 2)) <= ERROR_LINE_LIMIT or "..." in error_line(message * 2)
    assert "\n" not in error_line("first line\nsecond line") and "second line" in error_line("first line\nsecond line")


def _save(nodes, tmp_path, *, output_type=TensorProto.FLOAT, inits=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])],
                              [helper.make_tensor_value_info("y", output_type, ["batch", "sequence"])], initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "in.onnx"
    onnx.save(model, str(path))
    return path


def _optimize(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_input_onnx_runtime_cannot_load_is_one_short_line_and_whole_under_verbose(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths as a user types them: the line is the message's, not the temp folder's
    path = _save([helper.make_node("Relu", ["x"], ["y"])], tmp_path, output_type=TensorProto.FLOAT16).relative_to(tmp_path)
    out = tmp_path / "out.onnx"
    result = _optimize("optimize", "--input", str(path), "--output", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0] == (f"tfopt: error: {path}: ONNX Runtime cannot load the model ('y' is declared float16 but computed "
                        "as float); pass --no-validate to optimize it unchecked")
    assert not out.exists()
    loud = _optimize("-v", "optimize", "--input", str(path), "--output", str(out))
    lines = loud.stderr.strip().splitlines()
    assert loud.exit_code == 2 and lines[-1].startswith("tfopt: error: ")
    assert any(line.startswith("tfopt: in full: [ONNXRuntimeError]") and "tensor(float16)" in line for line in lines[:-1])


def test_input_onnx_runtime_cannot_run_on_generated_inputs_is_an_error_unless_no_validate(tmp_path, monkeypatch):
    """Before: written with 'parity not checked' and exit 0; `tfopt optimize` has no way to size the inputs otherwise."""
    monkeypatch.chdir(tmp_path)
    inits = [numpy_helper.from_array(np.ones(5, np.float32), "c")]
    path = _save([helper.make_node("Add", ["x", "c"], ["y"])], tmp_path, inits=inits).relative_to(tmp_path)
    out = tmp_path / "out.onnx"
    result = _optimize("optimize", "--input", str(path), "--output", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and lines[-1] == (
        f"tfopt: error: {path}: ONNX Runtime cannot run the model on generated inputs (Add node: dimensions 5 and 7 do not "
        "broadcast); pass --no-validate to optimize it unchecked"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]
    unchecked = _optimize("optimize", "--input", str(path), "--output", str(out), "--no_validate")
    assert unchecked.exit_code == 0 and out.is_file()


def _shapeless(tmp_path, name, nodes, inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)  # no shape at all
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, name, [x], [y], list(inits)), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def test_verify_and_bench_take_a_shapeless_input_from_the_graph_or_refuse_it_in_one_line(tmp_path):
    """feeds for verify/bench/profile: a shapeless input gets the shape the graph implies, else one line (was IndexError)."""
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    implied = _shapeless(tmp_path, "matmul", [helper.make_node("MatMul", ["x", "w"], ["y"])], [weight])
    result = CliRunner().invoke(main, ["verify", str(implied), "--reference", str(implied)])
    assert result.exit_code == 0, result.output
    silent = _shapeless(tmp_path, "identity", [helper.make_node("Identity", ["x"], ["y"])])
    for command in (["verify", str(silent), "--reference", str(silent)], ["bench", str(silent)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code != 0 and result.exception is None or isinstance(result.exception, SystemExit), result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "declares no shape" in lines[0] and len(lines[0]) <= ERROR_LINE_LIMIT, result.output
