"""tfopt's graph preparation keeps what a model computes, on graphs that almost match a fusion.

The fuzz harness found LayerNorm-like graphs (``Sub(mean, x)``, ``Pow(d, p)`` with p != 2)
that tfopt refused to optimize: "fails validation even with no fusion rule applied". The
bisection (prepare, rules, cleanup, each run in ONNX Runtime without its own optimizations)
showed tfopt's output equal to the input's; ONNX Runtime's own LayerNorm fusion, which runs
on every session with graph optimizations, takes these graphs as LayerNorm and computes
something else, for the input as much as for tfopt's output. So: tfopt's passes are checked
here against the input's ONNX semantics (no ORT optimizations), validation must not blame
tfopt for ORT's rewrite, and a NaN/inf constant must not crash the polynomial reader.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from tfopt.graph import fuse_file, fuse_model, load_model
from tfopt.graph.values import polynomial
from tfopt.results import ModelInfo

WIDTH = 16
SHAPES = ((2, 7), (1, 4))


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _layer_norm_like(*, centered: tuple[str, str] = ("x", "mean"), exponent: float = 2.0, opset: int = 17) -> onnx.ModelProto:
    """x -> (centred / sqrt(mean(centred ** exponent) + eps)) * gamma + beta -> MatMul, a LayerNorm but for the knobs.

    Opset 17, the first with LayerNormalization: below it a fused one is written back, and a count
    of LayerNormalization ops would no longer tell whether the rule matched.
    """
    rng = np.random.default_rng(1)
    nodes = [
        oh.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
        oh.make_node("Sub", list(centered), ["centered"]),
        oh.make_node("Pow", ["centered", "exponent"], ["square"]),
        oh.make_node("ReduceMean", ["square"], ["variance"], axes=[-1]),
        oh.make_node("Add", ["variance", "eps"], ["variance_eps"]),
        oh.make_node("Sqrt", ["variance_eps"], ["std"]),
        oh.make_node("Div", ["centered", "std"], ["normalized"]),
        oh.make_node("Mul", ["normalized", "gamma"], ["scaled"]),
        oh.make_node("Add", ["scaled", "beta"], ["ln"]),
        oh.make_node("MatMul", ["ln", "weight"], ["y"]),
    ]
    initializers = [
        _const("exponent", exponent),
        _const("eps", 1e-5),
        _const("gamma", 1.0 + 0.1 * rng.standard_normal(WIDTH)),
        _const("beta", 0.1 * rng.standard_normal(WIDTH)),
        _const("weight", 0.3 * rng.standard_normal((WIDTH, WIDTH))),
    ]
    graph = oh.make_graph(
        nodes,
        "layer_norm_like",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", WIDTH])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", WIDTH])],
        initializers,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)


def _run(path, x: np.ndarray, *, optimized: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    level = "ORT_ENABLE_ALL" if optimized else "ORT_DISABLE_ALL"
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _feeds():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((batch, sequence, WIDTH)).astype(np.float32) for batch, sequence in SHAPES]


def _assert_same_function(reference, candidate):
    """Candidate vs reference, both without ORT's graph optimizations: the ONNX semantics of each file."""
    for x in _feeds():
        expected = _run(reference, x, optimized=False)
        actual = _run(candidate, x, optimized=False)
        scale = max(1.0, float(np.max(np.abs(expected), initial=0.0, where=np.isfinite(expected))))
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)  # NaN where the input has NaN


NEAR_MISSES = {
    "sub_operands_swapped": dict(centered=("mean", "x")),
    "exponent_0": dict(exponent=0.0),
    "exponent_1e3": dict(exponent=1e3),
    "exponent_1e30": dict(exponent=2e30),
}


@pytest.mark.parametrize("form", NEAR_MISSES)
def test_near_miss_layer_norm_keeps_its_function(tmp_path, form):
    """Not a LayerNorm: tfopt fuses nothing into LayerNormalization and computes what the input computes."""
    source = tmp_path / "in.onnx"
    onnx.save(_layer_norm_like(**NEAR_MISSES[form]), source)
    model = load_model(source)
    stats = fuse_model(model, ModelInfo(model_type="bert"))
    assert stats.op_counts.get("LayerNormalization", 0) == 0
    assert stats.op_counts.get("SkipLayerNormalization", 0) == 0
    fused = tmp_path / "fused.onnx"
    ir.save(model, fused)
    _assert_same_function(source, fused)


def test_swapped_centering_is_an_rms_norm_of_the_centered_value(tmp_path):
    """(mean - x) / sqrt(mean((mean - x)^2) + eps) * gamma is no LayerNorm of x, but exactly an
    RMSNorm of (mean - x): it fuses as that, which also leaves ORT no near-miss to miscompile."""
    source = tmp_path / "in.onnx"
    onnx.save(_layer_norm_like(**NEAR_MISSES["sub_operands_swapped"]), source)
    result = fuse_file(source, tmp_path / "out.onnx", ModelInfo(model_type="bert"))
    assert result.op_counts.get("SimplifiedLayerNormalization") == 1 and "LayerNormalization" not in result.op_counts
    assert result.validation is not None and result.validation.passed and not result.dropped_rules
    _assert_same_function(source, tmp_path / "out.onnx")


@pytest.mark.parametrize("form", ["exponent_1e30"])
def test_validation_does_not_blame_tfopt_for_ort_own_fusion(tmp_path, form):
    """ORT's LayerNorm fusion changes the input itself; tfopt's output is validated against the ONNX semantics."""
    source = tmp_path / "in.onnx"
    onnx.save(_layer_norm_like(**NEAR_MISSES[form]), source)
    x = _feeds()[0]
    ort_drift = float(np.abs(_run(source, x, optimized=True) - _run(source, x, optimized=False)).max())
    if ort_drift < 1e-3:
        pytest.skip(f"this ONNX Runtime ({ort.__version__}) no longer miscompiles the {form} form")
    result = fuse_file(source, tmp_path / "out.onnx", ModelInfo(model_type="bert"))
    assert result.validation is not None and result.validation.passed, result.validation
    assert not result.dropped_rules
    assert any("change what the input itself computes" in note for note in result.validation.notes)
    _assert_same_function(source, tmp_path / "out.onnx")


def test_true_layer_norm_still_fuses_and_matches(tmp_path):
    """The control: the exact form fuses and keeps its numbers, also with ORT's optimizations on."""
    source = tmp_path / "in.onnx"
    onnx.save(_layer_norm_like(), source)
    result = fuse_file(source, tmp_path / "out.onnx", ModelInfo(model_type="bert"), validate=False)
    assert result.op_counts.get("LayerNormalization", 0) == 1
    _assert_same_function(source, tmp_path / "out.onnx")
    for x in _feeds():
        np.testing.assert_allclose(_run(tmp_path / "out.onnx", x, optimized=True), _run(source, x, optimized=False), atol=1e-4)


@pytest.mark.parametrize("exponent", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pow_exponent(tmp_path, exponent):
    """A NaN/inf exponent is read as an atom, not crash the polynomial reader, and the model keeps its function."""
    source = tmp_path / "in.onnx"
    onnx.save(_layer_norm_like(exponent=exponent), source)
    model = load_model(source)
    square = next(node for node in model.graph if node.op_type == "Pow").outputs[0]
    terms, atoms = polynomial(square)
    assert list(atoms.values()) == [square]  # the Pow itself, unexpanded
    result = fuse_file(source, tmp_path / "out.onnx", ModelInfo(model_type="bert"), validate=False)
    assert result.op_counts.get("LayerNormalization", 0) == 0
    _assert_same_function(source, tmp_path / "out.onnx")


@pytest.mark.parametrize("divisor", [float("nan"), float("inf")])
def test_non_finite_divisor_stays_an_atom(divisor):
    """x / inf is NaN for infinite x, not the 0 * x the expansion would write."""
    graph = oh.make_graph(
        [oh.make_node("Div", ["x", "d"], ["y"])],
        "div",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [_const("d", divisor)],
    )
    model = ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)]))
    output = model.graph.outputs[0]
    terms, atoms = polynomial(output)
    assert list(atoms.values()) == [output]
