"""RMSNorm -> SimplifiedLayerNormalization, residual + RMSNorm -> SkipSimplifiedLayerNormalization.

Hand-built graphs for the spellings exporters write (Div by the root, a product with its
Reciprocal as torch exports ``rsqrt``, x*x for the square, float16 models computing in
float32 between Casts, Gemma's scale inside the float32 part, opset 12 as ONNX Runtime's
own test graphs have), then a torch-exported pre-norm residual stack, the layout of
Llama-family decoders. Each case checks the fused-op counts and the numbers in ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt.graph import count_ops, fuse_model
from tfopt.results import ModelInfo

H = 16
RNG = np.random.default_rng(7)


def _run(model, feeds: dict) -> np.ndarray:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _fuse(proto: onnx.ModelProto) -> tuple[ir.Model, object]:
    model = ir.serde.deserialize_model(proto)
    return model, fuse_model(model, ModelInfo(model_type="custom"))


def _rms_norm_graph(*, divide: str = "Div", square: str = "Pow", cast: str = "none", opset: int = 18):
    """y = x / sqrt(mean(x^2) + eps) * gamma in one of the exported spellings."""
    narrow = cast != "none"
    elem = TensorProto.FLOAT16 if narrow else TensorProto.FLOAT
    axes_inputs = ["axes"] if opset >= 18 else []
    axes_attr = {} if opset >= 18 else {"axes": [-1]}
    nodes = []
    source = "x"
    if narrow:
        nodes.append(helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT))
        source = "x32"
    nodes.append(helper.make_node("Pow", [source, "two"], ["sq"]) if square == "Pow" else helper.make_node("Mul", [source, source], ["sq"]))
    nodes += [
        helper.make_node("ReduceMean", ["sq", *axes_inputs], ["ms"], **axes_attr),
        helper.make_node("Add", ["ms", "eps"], ["ms_eps"]),
        helper.make_node("Sqrt", ["ms_eps"], ["root"]),
    ]
    if divide == "Div":
        nodes.append(helper.make_node("Div", [source, "root"], ["norm"]))
    else:  # torch's rsqrt: Reciprocal(Sqrt(.)), then a product
        nodes += [helper.make_node("Reciprocal", ["root"], ["inv"]), helper.make_node("Mul", [source, "inv"], ["norm"])]
    gamma = RNG.normal(size=H)
    if cast == "before_scale":
        nodes += [helper.make_node("Cast", ["norm"], ["norm16"], to=elem), helper.make_node("Mul", ["gamma", "norm16"], ["y"])]
        gamma = gamma.astype(np.float16)
    elif cast == "after_scale":
        nodes += [helper.make_node("Mul", ["norm", "gamma"], ["scaled"]), helper.make_node("Cast", ["scaled"], ["y"], to=elem)]
        gamma = gamma.astype(np.float32)
    else:
        nodes.append(helper.make_node("Mul", ["gamma", "norm"], ["y"]))
        gamma = gamma.astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array(gamma, "gamma"),
    ]
    if axes_inputs:
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
    graph = helper.make_graph(
        nodes, "rms", [helper.make_tensor_value_info("x", elem, ["batch", "seq", H])],
        [helper.make_tensor_value_info("y", elem, None)], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("opset", [12, 18])
@pytest.mark.parametrize("divide", ["Div", "Reciprocal"])
@pytest.mark.parametrize("square", ["Pow", "Mul"])
def test_rms_norm_becomes_simplified_layer_norm(opset, divide, square):
    proto = _rms_norm_graph(divide=divide, square=square, opset=opset)
    fused, _ = _fuse(proto)
    counts = count_ops(fused)
    assert counts == {"SimplifiedLayerNormalization": 1}, counts
    assert fused.opset_imports[""] == opset  # an op ONNX Runtime registers at every opset: nothing raised
    feeds = {"x": RNG.normal(size=(2, 5, H)).astype(np.float32) * 3}
    np.testing.assert_allclose(_run(fused, feeds), _run(proto, feeds), rtol=0, atol=2e-6)


@pytest.mark.parametrize("cast", ["before_scale", "after_scale"])
def test_float16_rms_norm_between_casts_becomes_one_op(cast):
    proto = _rms_norm_graph(divide="Reciprocal", cast=cast)
    fused, _ = _fuse(proto)
    assert count_ops(fused) == {"SimplifiedLayerNormalization": 1}
    feeds = {"x": (RNG.normal(size=(2, 5, H)) * 3).astype(np.float16)}
    expected, actual = _run(proto, feeds).astype(np.float32), _run(fused, feeds).astype(np.float32)
    # one float16 rounding moves (the fused op rounds the product once): within 2 half-ulps of the value
    np.testing.assert_allclose(actual, expected, rtol=2 * 2.0 ** -11, atol=1e-3)


def test_mean_over_another_axis_is_not_rms_norm():
    proto = _rms_norm_graph(opset=12)
    for node in proto.graph.node:
        if node.op_type == "ReduceMean":
            del node.attribute[:]
            node.attribute.extend([helper.make_attribute("axes", [1]), helper.make_attribute("keepdims", 1)])
    fused, _ = _fuse(proto)
    assert "SimplifiedLayerNormalization" not in count_ops(fused)


def test_other_exponent_is_not_rms_norm():
    proto = _rms_norm_graph()
    for init in proto.graph.initializer:
        if init.name == "two":
            init.CopyFrom(numpy_helper.from_array(np.array(3.0, np.float32), "two"))
    fused, _ = _fuse(proto)
    assert "SimplifiedLayerNormalization" not in count_ops(fused)


def _pre_norm_stack(num_layers: int):
    import torch

    class RmsNorm(torch.nn.Module):  # the Llama/T5 formulation: float32 inside, scale after
        def __init__(self, width):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(width) * 0.2 + 1)

        def forward(self, x):
            x32 = x.to(torch.float32)
            x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)
            return self.weight * x32.to(x.dtype)

    class Stack(torch.nn.Module):  # h += f(norm(h)) per sub-layer, one final norm: Llama's layout
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(50, H)
            self.norms = torch.nn.ModuleList(RmsNorm(H) for _ in range(2 * num_layers))
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(H, H) for _ in range(2 * num_layers))
            self.final = RmsNorm(H)

        def forward(self, ids):
            h = self.embed(ids)
            for norm, block in zip(self.norms, self.blocks):
                h = h + block(norm(h))
            return self.final(h)

    torch.manual_seed(0)
    return Stack().eval()


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
def test_pre_norm_residual_stack_fuses_every_norm(tmp_path, dynamo):
    torch = pytest.importorskip("torch")  # the TensorFlow deployment has none

    from tfopt.torch_kit import quiet_export

    num_layers = 2
    model = _pre_norm_stack(num_layers)
    ids = torch.randint(0, 50, (2, 7))
    path = tmp_path / "stack.onnx"
    kwargs = (
        {"dynamo": True, "dynamic_shapes": ({0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC},)}
        if dynamo else {"dynamo": False, "dynamic_axes": {"ids": {0: "b", 1: "s"}}, "opset_version": 17}
    )
    with quiet_export():
        torch.onnx.export(model, (ids,), str(path), input_names=["ids"], output_names=["y"], **kwargs)
    proto = onnx.load(str(path))
    fused, stats = _fuse(proto)
    counts = count_ops(fused)
    # The first norm reads the embedding lookup; every other one follows a residual Add.
    assert counts.get("SimplifiedLayerNormalization") == 1, counts
    assert counts.get("SkipSimplifiedLayerNormalization") == 2 * num_layers, counts
    assert not {"Pow", "ReduceMean", "Sqrt", "Reciprocal"} & set(counts), counts
    for shape in [(1, 1), (2, 7), (3, 13)]:
        feed = RNG.integers(0, 50, size=shape).astype(np.int64)
        expected = model(torch.from_numpy(feed)).detach().numpy()
        np.testing.assert_allclose(_run(fused, {"ids": feed}), expected, rtol=0, atol=2e-5)
