"""torch's own attention modules fuse: ``nn.MultiheadAttention`` (a pooling probe, self-attention, a padding
mask) and ``nn.TransformerEncoder`` (post-LN and pre-LN).

SigLIP's pooling head, DETR-style decoders and many hand-written models use these modules rather
than transformers' attention classes. TorchScript (the legacy exporter) computes its
scaled_dot_product_attention scale from ``Shape(q)[-1:]``; ``prepare``'s
``static_shape_slices`` turns that into the head size once shapes are known, and the shared
attention rules match (without it neither module fuses on the legacy exporter). Called with
``need_weights=True`` (its default) the module runs its math path, sequence-first with the heads
folded into the batch (and a padding mask added to the folded scores), which
``head_folded.SequenceFirstFolded`` unfolds, on both exporters: the legacy one's fold targets
(``batch * heads`` computed from shapes) get their other dims from ``shape_facts``, and its
traced length baked into them is accepted where the target is exactly [n, batch * heads, d]
(the model then runs only at that length anyway). Counts and parity with torch on two shapes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tfopt.graph import fuse_file
from tfopt.results import ModelInfo

torch = pytest.importorskip("torch")  # the TensorFlow deployment has none

from tfopt.torch_kit import quiet_export  # noqa: E402

WIDTH, HEADS = 32, 4


class Block(torch.nn.Module):
    def __init__(self, form: str, need_weights: bool = False):
        super().__init__()
        self.form, self.need_weights = form, need_weights
        self.probe = torch.nn.Parameter(torch.randn(1, 1, WIDTH))
        self.attention = torch.nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)

    def forward(self, x, mask):
        if self.form == "probe":  # one learned query over the sequence (SigLIP's head)
            return self.attention(self.probe.expand(x.shape[0], -1, -1), x, x, need_weights=self.need_weights)[0]
        padding = (mask == 0) if self.form == "padded" else None
        return self.attention(x, x, x, key_padding_mask=padding, need_weights=self.need_weights)[0]


def _inputs(batch: int, sequence: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, sequence, dtype=torch.int64)
    mask[-1, sequence - 2:] = 0
    return torch.randn(batch, sequence, WIDTH, generator=generator), mask


# need_weights=True (the module's default) runs its math path: sequence-first, heads folded into the
# batch, the padding mask added to the folded scores (head_folded.SequenceFirstFolded)
CASES = [pytest.param(form, exporter, need_weights, id=f"{form}-{exporter}" + ("-weights" if need_weights else ""))
         for need_weights in (False, True) for form in ("probe", "self", "padded") for exporter in ("legacy", "dynamo")]


@pytest.mark.parametrize("form,exporter,need_weights", CASES)
def test_multihead_attention_module_fuses_and_matches_torch(tmp_path, form, exporter, need_weights):
    torch.manual_seed(0)
    block = Block(form, need_weights).eval()
    source, fused = tmp_path / "block.onnx", tmp_path / "block.opt.onnx"
    with quiet_export():
        if exporter == "legacy":
            torch.onnx.export(block, _inputs(2, 7, 0), str(source), dynamo=False, opset_version=17, input_names=["x", "mask"],
                              output_names=["y"], dynamic_axes={"x": {0: "batch", 1: "sequence"}, "mask": {0: "batch", 1: "sequence"}})
        else:
            dynamic = torch.export.Dim.DYNAMIC
            torch.onnx.export(block, _inputs(2, 7, 0), str(source), dynamo=True, input_names=["x", "mask"], output_names=["y"],
                              dynamic_shapes=({0: dynamic, 1: dynamic}, {0: dynamic, 1: dynamic}))
    result = fuse_file(source, fused, ModelInfo(model_type="custom"))
    counts = Counter(node.op_type for node in onnx.load(str(fused)).graph.node)
    assert counts["Attention"] + counts["MultiHeadAttention"] == 1 and "Softmax" not in counts, dict(counts)
    assert result.leftover == {}
    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    fed = {value.name for value in session.get_inputs()}
    # TorchScript bakes the module's sequence length into its reshapes (torch's legacy export of it
    # runs at the traced length only, raw or fused); images of one size (SigLIP) keep it fixed anyway
    shapes = [(1, 7), (3, 7)] if exporter == "legacy" else [(1, 5), (3, 9)]
    for batch, sequence in shapes:
        x, mask = _inputs(batch, sequence, seed=batch)
        with torch.no_grad():
            expected = block(x, mask).numpy()
        actual = session.run(None, {name: value.numpy() for name, value in (("x", x), ("mask", mask)) if name in fed})[0]
        if form == "padded":  # a padded query's row is whatever each implementation leaves there
            real = mask.numpy().astype(bool)
            actual, expected = actual[real], expected[real]
        np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_torch_transformer_encoder_fuses_and_matches_torch(tmp_path, norm_first, exporter):
    """``nn.TransformerEncoder`` as a user builds it (post-LN, or pre-LN with ``norm_first``): every
    attention, norm and gelu fused; pre-LN keeps the first layer's norm (it reads the input, no residual)."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(WIDTH, HEADS, 2 * WIDTH, dropout=0.0, batch_first=True, norm_first=norm_first,
                                             activation="gelu")
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    with torch.no_grad():  # off the default init (LayerNorms at 1 and 0, biases at 0)
        for parameter in encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    source, fused = tmp_path / "encoder.onnx", tmp_path / "encoder.opt.onnx"
    example = torch.randn(2, 7, WIDTH)
    with quiet_export():
        if exporter == "legacy":
            torch.onnx.export(encoder, (example,), str(source), dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "batch", 1: "sequence"}})
        else:
            dynamic = torch.export.Dim.DYNAMIC
            torch.onnx.export(encoder, (example,), str(source), dynamo=True, input_names=["x"], output_names=["y"],
                              dynamic_shapes=({0: dynamic, 1: dynamic},))
    result = fuse_file(source, fused, ModelInfo(model_type="custom"))
    counts = Counter(node.op_type for node in onnx.load(str(fused)).graph.node)
    assert counts["Attention"] + counts["MultiHeadAttention"] == 2 and counts["BiasGelu"] == 2, dict(counts)
    assert counts["SkipLayerNormalization"] == (3 if norm_first else 4) and counts["LayerNormalization"] == int(norm_first)
    assert result.leftover == {}
    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    shapes = [(1, 7), (3, 7)] if exporter == "legacy" else [(1, 5), (3, 9)]  # TorchScript bakes the length in
    for batch, sequence in shapes:
        x = torch.randn(batch, sequence, WIDTH, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = encoder(x).numpy()
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-5, rtol=0)


def _fold_target(entries: str):
    """A Reshape target computed as TorchScript computes a fold's, from x [sequence, batch, 32]."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    def const(name, value):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [1], [value]))

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.INT64, [], [0])),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.INT64, [], [1])),
        helper.make_node("Constant", [], ["heads"], value=helper.make_tensor("heads", TensorProto.INT64, [], [HEADS])),
        helper.make_node("Gather", ["shape", "zero"], ["length"], axis=0),
        helper.make_node("Gather", ["shape", "one"], ["batch"], axis=0),
        helper.make_node("Mul", ["batch", "heads"], ["batch_heads"]),
        helper.make_node("Mul", ["length", "batch_heads"], ["everything"]),
        const("axes", 0), const("seven", 7), const("unit", 1), const("head_size", WIDTH // HEADS),
        helper.make_node("Unsqueeze", ["batch_heads", "axes"], ["batch_heads_1d"]),
        helper.make_node("Unsqueeze", ["everything", "axes"], ["everything_1d"]),
        helper.make_node("Concat", entries.split(), ["target"], axis=0),
    ]
    graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["sequence", "batch", WIDTH])],
                              [helper.make_tensor_value_info("target", TensorProto.INT64, [3])])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = model.graph.inputs[0]
    return model.graph.outputs[0], x.shape[1]


@pytest.mark.parametrize("entries,exact", [
    ("seven batch_heads_1d head_size", True),  # [7, batch*heads, d]: runs only where the sequence is 7
    ("unit everything_1d head_size", False),  # [1, sequence*batch*heads, d]: runs at every length, another attention
    ("seven batch_heads_1d seven", False),  # not the head size
])
def test_a_baked_fold_length_is_taken_only_from_an_exact_target(entries, exact):
    from tfopt.graph.rules.head_folded import _fold_is_exact

    target, batch = _fold_target(entries)
    assert _fold_is_exact(target, batch, HEADS, WIDTH // HEADS) is exact
