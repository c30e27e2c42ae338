"""Inputs ONNX Runtime runs although ONNX forbids them are repaired at load, as ONNX Runtime reads them (issue 17).

Each test builds a tiny graph with onnx.helper in the form that was refused before, and
shows that it loads, fuses where there is something to fuse, and that the optimized model,
validated by `tfopt optimize` against ONNX Runtime on the input, computes what ONNX Runtime
computes on the input. What ONNX Runtime refuses as well stays a one-line refusal.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tfopt
from tfopt.errors import TfoptError
from tfopt.graph.ort_schemas import ort_registers
from tfopt.graph.io import INPUT_SHAPES, LOAD_NOTES, load_model

HIDDEN, INNER = 8, 16
RNG = np.random.default_rng(17)


def _weights(name: str, *shape: int, scale: float = 0.3) -> TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _scalar(name: str, value: float) -> TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def _constant(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=_scalar(name, value))


def _mlp_block(gelu: list[onnx.NodeProto], *, opset: int = 17, dims=("batch", "sequence", HIDDEN), imports=None,
               extra_inits=()) -> onnx.ModelProto:
    """x -> MatMul+bias -> ``gelu`` (reads "hb", writes "act") -> MatMul+bias -> + x -> LayerNormalization -> y."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        *gelu,
        helper.make_node("MatMul", ["act", "w2"], ["o"]),
        helper.make_node("Add", ["o", "b2"], ["ob"]),
        helper.make_node("Add", ["ob", "x"], ["residual"]),
        helper.make_node("LayerNormalization", ["residual", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5),
    ]
    inits = [_weights("w1", HIDDEN, INNER), _weights("b1", INNER, scale=0.1), _weights("w2", INNER, HIDDEN),
             _weights("b2", HIDDEN, scale=0.1), _weights("gamma", HIDDEN, scale=1.0), _weights("beta", HIDDEN, scale=0.1),
             *extra_inits]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims) if dims is not None else None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims) if dims is not None else None)
    graph = helper.make_graph(nodes, "repair", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=imports or [helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _erf_gelu(sqrt2: str = "sqrt2") -> list[onnx.NodeProto]:
    """act = hb * 0.5 * (1 + erf(hb / sqrt2))"""
    return [
        helper.make_node("Div", ["hb", sqrt2], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["erf1"]),
        helper.make_node("Mul", ["hb", "erf1"], ["twice"]),
        helper.make_node("Mul", ["twice", "half"], ["act"]),
    ]


GELU_CONSTANTS = (_scalar("one", 1.0), _scalar("half", 0.5))


def _ort(path_or_model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    source = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _optimized(model: onnx.ModelProto, tmp_path, **kwargs):
    """(optimized model, its path, the input's path): `tfopt optimize` end to end, validation included."""
    source = tmp_path / "in.onnx"
    onnx.save(model, str(source))
    optimized = tfopt.optimize_model(str(source), model_type="bert", **kwargs)
    out = optimized.save_model_to_file(tmp_path / "out.onnx")
    return optimized, out, source


def _same_in_ort(source, out, feed: dict[str, np.ndarray]) -> None:
    expected = _ort(source).run(None, feed)[0]
    actual = _ort(out).run(None, feed)[0]
    assert np.abs(actual - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def _feed(batch=2, sequence=5) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((batch, sequence, HIDDEN)).astype(np.float32)}


# --- com.microsoft nodes without an opset import ---------------------------------------------------------------------


def test_contrib_nodes_without_their_opset_import_get_it(tmp_path):
    """Refused before ("No opset import for domain 'com.microsoft'"); ONNX Runtime runs it."""
    fast_gelu = [helper.make_node("FastGelu", ["hb"], ["act"], domain="com.microsoft")]
    model = _mlp_block(fast_gelu)
    assert {o.domain for o in model.opset_import} == {""}
    _ort(model).run(None, _feed())  # ONNX Runtime loads and runs it as it is
    loaded = load_model(_save(model, tmp_path / "m.onnx"))
    assert loaded.opset_imports == {"": 17, "com.microsoft": 1}
    assert any("com.microsoft" in note for note in loaded.meta[LOAD_NOTES])
    optimized, out, source = _optimized(model, tmp_path)
    stats = optimized.get_fused_operator_statistics()
    assert stats["FastGelu"] == 1 and stats["SkipLayerNormalization"] == 1, stats  # FastGelu took the bias; Add+LN fused
    assert optimized.validation.feeds > 0  # compared with ONNX Runtime on the input
    assert any("com.microsoft" in note for note in optimized.stats.notes)
    _same_in_ort(source, out, _feed())


# --- a name defined twice by Constant nodes / initializers ---------------------------------------------------------------


def test_constant_defined_twice_with_one_value_loads_fuses_and_runs(tmp_path):
    """gpt2_past.onnx's form: a Constant's name again, later in the file. Refused before ("defined twice")."""
    sqrt2 = math.sqrt(2.0)
    gelu = [_constant("sqrt2", sqrt2), *_erf_gelu()]
    model = _mlp_block(gelu, extra_inits=GELU_CONSTANTS)
    model.graph.node.append(_constant("sqrt2", sqrt2))  # the second definition, after every reader
    _ort(model).run(None, _feed())
    loaded = load_model(_save(model, tmp_path / "m.onnx"))
    assert sum(node.op_type == "Constant" for node in loaded.graph) == 1
    optimized, out, source = _optimized(model, tmp_path)
    stats = optimized.get_fused_operator_statistics()
    assert stats["BiasGelu"] == 1 and stats["SkipLayerNormalization"] == 1, stats
    assert optimized.validation.feeds > 0
    _same_in_ort(source, out, _feed())


def test_constant_defined_twice_with_two_values_computes_what_onnx_runtime_computes(tmp_path):
    """ONNX Runtime gives every reader the last Constant of a name, also the readers before it (gpt2_past.onnx's
    Div by 8 reads 1.414): the repaired model keeps that Constant, so it computes what ONNX Runtime computes."""
    gelu = [_constant("sqrt2", 8.0), *_erf_gelu()]
    model = _mlp_block(gelu, extra_inits=GELU_CONSTANTS)
    model.graph.node.append(_constant("sqrt2", math.sqrt(2.0)))
    feed = _feed()
    as_ort_runs = _ort(model).run(None, feed)[0]
    first_value = onnx.ModelProto.FromString(model.SerializeToString())
    del first_value.graph.node[-1]  # the reading in node order: the Div reads 8
    assert not np.allclose(_ort(first_value).run(None, feed)[0], as_ort_runs)  # the two readings differ
    loaded = load_model(_save(model, tmp_path / "m.onnx"))
    constants = [node for node in loaded.graph if node.op_type == "Constant"]
    assert len(constants) == 1 and float(constants[0].attributes["value"].value.numpy()) == pytest.approx(math.sqrt(2.0))
    assert any("'sqrt2' is defined 2 times; kept the last" in note for note in loaded.meta[LOAD_NOTES])
    optimized, out, source = _optimized(model, tmp_path)
    assert optimized.validation.feeds > 0
    assert np.abs(_ort(out).run(None, feed)[0] - as_ort_runs).max() < 1e-4


def test_initializer_and_constant_of_one_name_keep_what_onnx_runtime_reads(tmp_path):
    """Small tensors (under 128 bytes): ONNX Runtime reads the Constant node over an initializer of its name, and
    the last of two initializers."""
    gelu = [_constant("sqrt2", math.sqrt(2.0)), *_erf_gelu()]
    model = _mlp_block(gelu, extra_inits=(*GELU_CONSTANTS, _scalar("sqrt2", 3.0)))
    feed = _feed()
    expected = _ort(model).run(None, feed)[0]
    (tmp_path / "a").mkdir()
    _, out, _ = _optimized(model, tmp_path / "a")
    assert np.abs(_ort(out).run(None, feed)[0] - expected).max() < 1e-4
    twice = _mlp_block(_erf_gelu(), extra_inits=(*GELU_CONSTANTS, _scalar("sqrt2", 3.0), _scalar("sqrt2", math.sqrt(2.0))))
    expected = _ort(twice).run(None, feed)[0]
    (tmp_path / "b").mkdir()
    optimized, out, _ = _optimized(twice, tmp_path / "b")
    assert optimized.get_fused_operator_statistics()["BiasGelu"] == 1  # the last initializer, sqrt 2, is a Gelu
    assert np.abs(_ort(out).run(None, feed)[0] - expected).max() < 1e-4


def test_large_tensors_defined_twice_keep_the_first(tmp_path):
    """From 128 bytes on, ONNX Runtime 1.32 reads the first definition: a weight stored twice (ORT warns
    "Duplicate initializer") is read as the first, and so is the repaired model's."""
    model = _mlp_block(_erf_gelu(), extra_inits=(*GELU_CONSTANTS, _scalar("sqrt2", math.sqrt(2.0))))
    second = numpy_helper.from_array(numpy_helper.to_array(model.graph.initializer[2]) * 2 + 1, "w2")  # 512 bytes
    model.graph.initializer.append(second)
    feed = _feed()
    expected = _ort(model).run(None, feed)[0]
    without_second = onnx.ModelProto.FromString(model.SerializeToString())
    del without_second.graph.initializer[-1]
    assert np.abs(_ort(without_second).run(None, feed)[0] - expected).max() == 0  # ONNX Runtime read the first
    optimized, out, _ = _optimized(model, tmp_path)
    assert optimized.validation.feeds > 0 and any("kept the first" in note for note in optimized.stats.notes)
    assert np.abs(_ort(out).run(None, feed)[0] - expected).max() < 1e-4


@pytest.mark.parametrize("form", ["node_then_constant", "constant_then_node", "input_and_constant"])
def test_definitions_onnx_runtime_refuses_too_stay_refused(tmp_path, form):
    model = _mlp_block(_erf_gelu(), extra_inits=(*GELU_CONSTANTS, _scalar("sqrt2", math.sqrt(2.0))))
    if form == "node_then_constant":  # "Duplicate definition of name (h)" in ONNX Runtime
        model.graph.node.insert(1, _constant("h", 1.0))
    elif form == "constant_then_node":
        model.graph.node.insert(0, _constant("h", 1.0))
    else:
        model.graph.node.insert(0, _constant("x", 1.0))
    with pytest.raises(Exception):
        _ort(model)
    with pytest.raises(TfoptError, match="is defined twice") as info:
        load_model(_save(model, tmp_path / "m.onnx"))
    assert "\n" not in str(info.value)


# --- ops onnx has no schema for at the model's opset: ONNX Runtime's schemas decide -------------------------------------


def test_onnx_runtime_schemas_are_read_from_onnx_runtime():
    assert ort_registers("LayerNormalization", "", 9) is True  # ONNX Runtime's contrib LayerNormalization, any opset
    assert ort_registers("SimplifiedLayerNormalization", "", 17) is True
    assert ort_registers("FastGelu", "com.microsoft", 1) is True
    assert ort_registers("FuzzNoSuchOp", "", 17) is False
    assert ort_registers("Gelu", "", 13) is False  # ONNX's Gelu is opset 20's


@pytest.mark.parametrize("opset", [9, 13, 16])
def test_layer_normalization_below_opset_17_loads_fuses_and_runs(tmp_path, opset):
    """ONNX Runtime registers LayerNormalization in the default domain for every opset; onnx.checker knows it from 17."""
    model = _mlp_block(_erf_gelu(), opset=opset, extra_inits=(*GELU_CONSTANTS, _scalar("sqrt2", math.sqrt(2.0))))
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    load_model(_save(model, tmp_path / "m.onnx"))
    optimized, out, source = _optimized(model, tmp_path)
    stats = optimized.get_fused_operator_statistics()
    assert stats["SkipLayerNormalization"] == 1 and stats["BiasGelu"] == 1, stats
    assert optimized.validation.feeds > 0
    _same_in_ort(source, out, _feed())


def test_simplified_layer_normalization_in_the_default_domain_loads(tmp_path):
    model = _mlp_block(_erf_gelu(), extra_inits=(*GELU_CONSTANTS, _scalar("sqrt2", math.sqrt(2.0))))
    model.graph.node[-1].op_type = "SimplifiedLayerNormalization"
    del model.graph.node[-1].input[2:]
    optimized, out, source = _optimized(model, tmp_path)
    assert optimized.validation.feeds > 0
    _same_in_ort(source, out, _feed())


def test_an_op_neither_onnx_nor_onnx_runtime_has_is_refused_at_load(tmp_path):
    model = _mlp_block(_erf_gelu(), extra_inits=(*GELU_CONSTANTS, _scalar("sqrt2", math.sqrt(2.0))))
    model.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(TfoptError, match="neither ONNX nor ONNX Runtime has an operator 'NoSuchOp' in ai.onnx opset 17"):
        load_model(_save(model, tmp_path / "m.onnx"))
    model.graph.node[1].op_type = "Add"
    model.graph.node[1].domain = "com.microsoft"  # com.microsoft::Add does not exist
    with pytest.raises(TfoptError, match="'Add' in com.microsoft opset 1"):
        load_model(_save(model, tmp_path / "c.onnx"))


def test_a_constant_node_without_a_value_is_refused_at_load(tmp_path):
    model = _mlp_block(_erf_gelu(), extra_inits=(*GELU_CONSTANTS, _scalar("sqrt2", math.sqrt(2.0))))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["unused"]))
    with pytest.raises(TfoptError, match="Constant node holds no value"):
        load_model(_save(model, tmp_path / "m.onnx"))


# --- inputs that declare no shape ------------------------------------------------------------------------------------------


def _shapeless(model: onnx.ModelProto) -> onnx.ModelProto:
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    return model


def test_an_input_without_a_shape_takes_the_one_the_graph_implies(tmp_path):
    """A graph whose values carry no shapes at all computes the same: it fuses and validates like the shaped one."""
    model = _shapeless(_mlp_block(_erf_gelu(), extra_inits=(*GELU_CONSTANTS, _scalar("sqrt2", math.sqrt(2.0)))))
    loaded = load_model(_save(model, tmp_path / "m.onnx"))
    assert loaded.meta[INPUT_SHAPES] == {"x": ["batch", "sequence", HIDDEN]}
    assert [str(dim) for dim in loaded.graph.inputs[0].shape] == ["batch", "sequence", str(HIDDEN)]
    optimized, out, source = _optimized(model, tmp_path)
    stats = optimized.get_fused_operator_statistics()
    assert stats["SkipLayerNormalization"] == 1 and stats["BiasGelu"] == 1, stats
    assert optimized.validation.feeds > 0
    _same_in_ort(source, out, _feed())
    assert not list(tmp_path.glob("tfopt-reference-*"))


def test_an_input_without_a_shape_the_graph_does_not_imply_is_one_line(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = _save(model, tmp_path / "in.onnx")
    optimized = tfopt.optimize_model(str(source))
    with pytest.raises(TfoptError, match="input 'x' declares no shape and the graph does not imply one") as info:
        optimized.save_model_to_file(tmp_path / "out.onnx")
    assert "--no-validate" in str(info.value) and not (tmp_path / "out.onnx").exists()
    unchecked = tfopt.optimize_model(str(source), validate=False)
    assert unchecked.save_model_to_file(tmp_path / "out.onnx").is_file()


def _save(model: onnx.ModelProto, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
