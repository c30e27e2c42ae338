"""``cpu_layer_norm``: SkipLayerNormalization written as Sum + LayerNormalization for the CPU provider.

Checked against ONNX Runtime's own SkipLayerNormalization kernel (the reference is the fused op,
not tfopt's code), with the residual sum read elsewhere, a bias, a broadcast skip and no beta;
that ONNX Runtime's session optimizer does not fuse the form back into the slow kernel; which
nodes are kept; the fusion plan's counts with and without it; the flags.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from click.testing import CliRunner

from tfopt import optimize_model
from tfopt.cli import main
from tfopt.errors import TfoptError
from tfopt.graph import cpu_forms, fuse_file
from tfopt.results import ModelInfo

HIDDEN = 16


def _skip_norm_model(*, bias: bool = True, beta: bool = True, sum_output: bool = True, skip_2d: bool = False,
                     mean_output: bool = False, opset: int = 17, dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    weights = {"gamma": rng.uniform(0.5, 1.5, HIDDEN), "beta": rng.standard_normal(HIDDEN), "bias": rng.standard_normal(HIDDEN)}
    inputs = ["x", "skip", "gamma", "beta" if beta else "", "bias" if bias else ""]
    outputs = ["out", "mean" if mean_output else "", "", "total" if sum_output else ""]
    while inputs[-1] == "":
        inputs.pop()
    while outputs[-1] == "":
        outputs.pop()
    nodes = [
        helper.make_node("SkipLayerNormalization", inputs, outputs, domain="com.microsoft", epsilon=1e-5, name="ln0"),
        helper.make_node("Relu", ["out"], ["y"]),  # a reader after the norm
    ]
    shape = ["batch", "sequence", HIDDEN]
    graph_outputs = [helper.make_tensor_value_info("y", dtype, shape)]
    if sum_output:
        nodes.append(helper.make_node("Neg", ["total"], ["carried"]))  # the sum read elsewhere (pre-LN)
        graph_outputs.append(helper.make_tensor_value_info("carried", dtype, shape))
    if mean_output:
        graph_outputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", "sequence", 1]))
    skip_shape = ["sequence", HIDDEN] if skip_2d else shape
    graph = helper.make_graph(
        nodes, "skip_norm",
        [helper.make_tensor_value_info("x", dtype, ["batch", "sequence", HIDDEN]),
         helper.make_tensor_value_info("skip", dtype, skip_shape)],
        graph_outputs,
        initializer=[numpy_helper.from_array(value.astype(np_type), name) for name, value in weights.items()
                     if name in inputs],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])


def _lowered(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = ir.serde.deserialize_model(proto)
    count = cpu_forms.skip_layer_norms_for_cpu(model)
    return ir.serde.serialize_model(model), count


def _run(proto: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("bias,beta,sum_output,skip_2d", [
    (True, True, True, False), (False, True, False, False), (True, False, True, True), (False, False, False, True),
])
def test_lowered_form_computes_what_the_fused_kernel_computes(bias, beta, sum_output, skip_2d):
    proto = _skip_norm_model(bias=bias, beta=beta, sum_output=sum_output, skip_2d=skip_2d)
    lowered, count = _lowered(proto)
    ops = Counter(node.op_type for node in lowered.graph.node)
    assert count == 1 and ops["SkipLayerNormalization"] == 0, dict(ops)
    assert ops["Sum"] == 1 and ops["LayerNormalization"] == 1 and ops["Add"] == int(bias), dict(ops)
    onnx.checker.check_model(lowered, full_check=True)
    rng = np.random.default_rng(1)
    for batch, sequence in ((1, 5), (3, 7)):  # two shapes
        feed = {"x": rng.standard_normal((batch, sequence, HIDDEN)).astype(np.float32) * 3,
                "skip": rng.standard_normal((sequence, HIDDEN) if skip_2d else (batch, sequence, HIDDEN)).astype(np.float32)}
        for expected, actual in zip(_run(proto, feed), _run(lowered, feed), strict=True):
            np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)


def test_session_optimizer_does_not_fuse_it_back(tmp_path):
    """ONNX Runtime fuses Add + LayerNormalization into SkipLayerNormalization: with Sum it must not."""
    lowered, _ = _lowered(_skip_norm_model(bias=False, sum_output=False))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "session.onnx")
    ort.InferenceSession(lowered.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = Counter(node.op_type for node in onnx.load(str(tmp_path / "session.onnx")).graph.node)
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 1, dict(ops)
    # ...which it does to the same graph written with Add: the reason for Sum
    with_add = onnx.ModelProto()
    with_add.CopyFrom(lowered)
    for node in with_add.graph.node:
        if node.op_type == "Sum":
            node.op_type = "Add"
    ort.InferenceSession(with_add.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert Counter(node.op_type for node in onnx.load(str(tmp_path / "session.onnx")).graph.node)["SkipLayerNormalization"] == 1


@pytest.mark.parametrize("why,kwargs", [
    ("its mean output is read", dict(mean_output=True)),
    ("opset 16 has no LayerNormalization", dict(opset=16)),
    ("fp16 is a GPU format", dict(dtype=TensorProto.FLOAT16)),
])
def test_kept_where_the_split_form_does_not_apply(why, kwargs):
    lowered, count = _lowered(_skip_norm_model(**kwargs))
    assert count == 0, why
    assert Counter(node.op_type for node in lowered.graph.node)["SkipLayerNormalization"] == 1, why


def _post_ln_layer(path) -> None:
    """One post-LN residual block as an exporter writes it: LN(x + MatMul(x, W) + b)."""
    rng = np.random.default_rng(2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["projected"]),
         helper.make_node("Add", ["projected", "b"], ["biased"]),
         helper.make_node("Add", ["biased", "x"], ["total"]),
         helper.make_node("LayerNormalization", ["total", "gamma", "beta"], ["out"], axis=-1, epsilon=1e-12)],
        "post_ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        initializer=[numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, name)
                     for name, shape in (("w", (HIDDEN, HIDDEN)), ("b", (HIDDEN,)), ("gamma", (HIDDEN,)), ("beta", (HIDDEN,)))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("options,ops,key", [
    (dict(cpu_layer_norm=True), {"SkipLayerNormalization": 0, "Sum": 1, "LayerNormalization": 1}, "SkipLayerNormalization|Sum"),
    ({}, {"SkipLayerNormalization": 1, "Sum": 0, "LayerNormalization": 0}, "SkipLayerNormalization"),  # the default
    (dict(target="cuda"), {"SkipLayerNormalization": 1, "Sum": 0, "LayerNormalization": 0}, "SkipLayerNormalization"),
])
def test_fusion_plan_writes_the_chosen_form_and_counts_it(tmp_path, options, ops, key):
    source, fused = tmp_path / "layer.onnx", tmp_path / "layer.opt.onnx"
    _post_ln_layer(source)
    result = fuse_file(source, fused, ModelInfo(model_type="bert", expected={"SkipLayerNormalization": 1}), **options)
    written = Counter(node.op_type for node in onnx.load(str(fused)).graph.node)
    assert {op: written[op] for op in ops} == ops, dict(written)
    assert result.expected == {key: 1} and not result.missing, (result.expected, result.missing)
    assert result.validation is not None and result.validation.passed and result.validation.feeds  # run against the input


def test_a_missing_residual_norm_is_still_reported_in_the_cpu_form(tmp_path):
    source, fused = tmp_path / "layer.onnx", tmp_path / "layer.opt.onnx"
    _post_ln_layer(source)
    result = fuse_file(source, fused, ModelInfo(model_type="bert", expected={"SkipLayerNormalization": 1}),
                       disabled=["skip_layer_norm"], cpu_layer_norm=True)
    assert Counter(node.op_type for node in onnx.load(str(fused)).graph.node)["Sum"] == 0
    assert result.expected == {}  # disabled: not expected
    result = fuse_file(source, fused, ModelInfo(model_type="bert", expected={"SkipLayerNormalization": 2}), cpu_layer_norm=True)
    assert result.missing == ["SkipLayerNormalization|Sum: expected 2, found 1"], result.missing


def test_cpu_form_is_refused_for_the_cuda_target(tmp_path):
    source = tmp_path / "layer.onnx"
    _post_ln_layer(source)
    with pytest.raises(TfoptError, match="CPU provider's form"):
        fuse_file(source, tmp_path / "out.onnx", ModelInfo(model_type="bert"), target="cuda", cpu_layer_norm=True)
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(TfoptError, match="not with use_gpu"):
        optimize_model(str(source), model_type="bert", use_gpu=True, cpu_layer_norm=True)


def test_optimize_command_flag(tmp_path):
    source, fused = tmp_path / "layer.onnx", tmp_path / "layer.opt.onnx"
    _post_ln_layer(source)
    outcome = CliRunner().invoke(main, ["optimize", "--input", str(source), "--output", str(fused), "--cpu_layer_norm"])
    assert outcome.exit_code == 0, outcome.output
    written = Counter(node.op_type for node in onnx.load(str(fused)).graph.node)
    assert written["Sum"] == 1 and written["SkipLayerNormalization"] == 0, dict(written)
    outcome = CliRunner().invoke(main, ["run", "--plugin", "bert_pt", "--target", "cuda", "--cpu-layer-norm",
                                        "--output", str(tmp_path / "run")])
    assert outcome.exit_code == 2 and "--target cuda keeps SkipLayerNormalization" in outcome.output, outcome.output
    assert not (tmp_path / "run").exists()
