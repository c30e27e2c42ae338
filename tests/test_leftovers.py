"""Primitives left unfused are counted from the graph, whatever a family claims, and make a run incomplete."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt.errors import FusionIncomplete
from tfopt.graph import fuse_model, fusion_shortfall
from tfopt.graph.leftovers import leftover_lines, leftover_primitives
from tfopt.hookspecs import hookimpl
from tfopt.results import ModelInfo, RunContext


def _model(nodes, constants: dict[str, np.ndarray], inputs=("x",), outputs=("y",)) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3, 8]) for name in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _layer_norm_body():
    return [
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"]),
        helper.make_node("Sub", ["x", "mean"], ["centered"]),
        helper.make_node("Pow", ["centered", "two"], ["squared"]),
        helper.make_node("ReduceMean", ["squared", "axes"], ["variance"]),
        helper.make_node("Add", ["variance", "eps"], ["shifted"]),
        helper.make_node("Sqrt", ["shifted"], ["std"]),
        helper.make_node("Div", ["centered", "std"], ["y"]),
    ]


NORM_CONSTANTS = {"axes": np.array([-1], np.int64), "two": np.float32(2.0), "eps": np.float32(1e-5)}


def test_a_layer_norm_body_and_an_rms_norm_body_are_norm_chains():
    assert leftover_primitives(_model(_layer_norm_body(), NORM_CONSTANTS)) == {"norm chain": 1}
    rms = [
        helper.make_node("Pow", ["x", "two"], ["squared"]),
        helper.make_node("ReduceMean", ["squared", "axes"], ["mean_square"]),
        helper.make_node("Add", ["mean_square", "eps"], ["shifted"]),
        helper.make_node("Cast", ["shifted"], ["shifted32"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["shifted32"], ["rms"]),
        helper.make_node("Reciprocal", ["rms"], ["inverse"]),
        helper.make_node("Mul", ["x", "inverse"], ["y"]),
    ]
    assert leftover_primitives(_model(rms, NORM_CONSTANTS)) == {"norm chain": 1}


def test_a_sqrt_of_something_else_is_no_norm_chain():
    nodes = [helper.make_node("Abs", ["x"], ["positive"]), helper.make_node("Sqrt", ["positive"], ["y"])]
    assert leftover_primitives(_model(nodes, {})) == {}


def test_exact_and_tanh_gelu_formulas_are_found_and_a_plain_tanh_is_not():
    exact = [
        helper.make_node("Div", ["x", "root2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["shifted"]),
        helper.make_node("Mul", ["x", "shifted"], ["y"]),
    ]
    assert leftover_primitives(_model(exact, {"root2": np.float32(1.4142), "one": np.float32(1.0)})) == {"gelu formula": 1}
    tanh = [
        helper.make_node("Pow", ["x", "three"], ["cube"]),
        helper.make_node("Mul", ["cube", "c"], ["small"]),
        helper.make_node("Add", ["x", "small"], ["inner"]),
        helper.make_node("Mul", ["inner", "k"], ["argument"]),
        helper.make_node("Tanh", ["argument"], ["y"]),
    ]
    constants = {"three": np.float32(3.0), "c": np.float32(0.044715), "k": np.float32(0.7978846)}
    assert leftover_primitives(_model(tanh, constants)) == {"gelu formula": 1}
    assert leftover_primitives(_model([helper.make_node("Tanh", ["x"], ["y"])], {})) == {}


def test_rotate_half_is_found_and_a_concat_of_a_plain_negation_is_not():
    halves = {"zero": np.array([0], np.int64), "four": np.array([4], np.int64), "end": np.array([8], np.int64),
              "axis": np.array([-1], np.int64)}
    rotate = [
        helper.make_node("Slice", ["x", "zero", "four", "axis"], ["first"]),
        helper.make_node("Slice", ["x", "four", "end", "axis"], ["second"]),
        helper.make_node("Neg", ["second"], ["negated"]),
        helper.make_node("Concat", ["negated", "first"], ["y"], axis=-1),
    ]
    assert leftover_primitives(_model(rotate, halves)) == {"rotate-half": 1}
    plain = [helper.make_node("Neg", ["x"], ["negated"]), helper.make_node("Concat", ["negated", "x"], ["y"], axis=-1)]
    assert leftover_primitives(_model(plain, {})) == {}


def test_a_disabled_fusion_allows_its_leftover():
    leftover = {"Softmax": 2, "norm chain": 1, "gelu formula": 3}
    assert leftover_lines(leftover) == [
        "2 Softmax left unfused (an attention pattern did not match)",
        "1 norm chain left unfused (a LayerNorm/RMSNorm did not fuse)",
        "3 gelu formula left unfused (a gelu did not fuse)",
    ]
    assert leftover_lines(leftover, {"attention", "layer_norm", "fast_gelu"}) == []


def test_a_norm_left_unfused_is_missing_although_the_family_expects_nothing_of_it():
    """The family states no expectation; a LayerNorm body without scale or bias (no rule takes it) is reported anyway."""
    stats = fuse_model(_model(_layer_norm_body(), NORM_CONSTANTS), ModelInfo("toy", expected={}))
    assert stats.leftover == {"norm chain": 1}
    assert stats.missing == ["1 norm chain left unfused (a LayerNorm/RMSNorm did not fuse)"]
    stats = fuse_model(_model(_layer_norm_body(), NORM_CONSTANTS), ModelInfo("toy", expected={}), disabled=["layer_norm"])
    assert stats.leftover == {"norm chain": 1} and stats.missing == []  # disabled: left on purpose


def test_fusion_shortfall_keeps_every_line_but_the_unchecked_warning():
    missing = ["no expected fusion counts for model type 'x': fusion is unchecked", "1 Softmax left unfused (...)"]
    assert fusion_shortfall(missing) == ["1 Softmax left unfused (...)"]


class _FuseLeavesAGelu:
    """Wraps fuse: the adapter's result says one gelu formula was left (as a family with an unmatched gelu would)."""

    @hookimpl(wrapper=True)
    def fuse(self, ctx, exported):
        fused = yield
        fused.leftover = {"gelu formula": 1}
        fused.missing = [*fused.missing, "1 gelu formula left unfused (a gelu did not fuse)"]
        return fused


def _pm(fresh_fakes):
    from tfopt.plugins import build_plugin_manager

    pm = build_plugin_manager(entry_points=[fresh_fakes.entry_point("export_only", fresh_fakes.FAKE_ENTRY_POINTS["export_only"])])
    pm.register(_FuseLeavesAGelu(), name="leaves_a_gelu")
    return pm


def test_a_verified_run_with_a_fusion_left_undone_is_incomplete_not_passed(fresh_fakes, tmp_path):
    from tfopt.pipeline import run_pipeline

    pm = _pm(fresh_fakes)
    ctx = RunContext(family="export_only", source=None, work_dir=tmp_path / "run", options={"benchmark": False})
    outcome = run_pipeline(pm, "export_only", ctx, raise_on_failure=False)
    assert outcome.status == "incomplete" and not outcome.passed and outcome.report["status"] == "incomplete"
    assert outcome.failure.startswith("fusion incomplete: 1 gelu formula left unfused")
    assert "--allow-missing-fusions" in outcome.failure
    assert outcome.report["fuse"]["leftover"] == {"gelu formula": 1}
    assert ctx.results["verify"].passed  # the numbers are right: only the fusion fell short
    with pytest.raises(FusionIncomplete):
        run_pipeline(pm, "export_only", RunContext(family="export_only", source=None, work_dir=tmp_path / "raise",
                                                    options={"benchmark": False}))


def test_allow_missing_fusions_lets_such_a_run_pass(fresh_fakes, tmp_path):
    from tfopt.pipeline import run_pipeline

    options = {"benchmark": False, "allow_missing_fusions": True}
    ctx = RunContext(family="export_only", source=None, work_dir=tmp_path / "run", options=options)
    outcome = run_pipeline(_pm(fresh_fakes), "export_only", ctx, raise_on_failure=False)
    assert outcome.status == "passed" and outcome.passed
    assert any("gelu formula left unfused" in warning for warning in outcome.report["warnings"])


def test_the_summary_shows_what_was_left(fresh_fakes, tmp_path):
    from tfopt.pipeline import run_pipeline
    from tfopt.report import summary_text

    ctx = RunContext(family="export_only", source=None, work_dir=tmp_path / "run", options={"benchmark": False})
    outcome = run_pipeline(_pm(fresh_fakes), "export_only", ctx, raise_on_failure=False)
    text = summary_text(outcome.report)
    assert text.startswith("tfopt INCOMPLETE: export_only")
    assert "primitives left unfused: 1 gelu formula" in text
