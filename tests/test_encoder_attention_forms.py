"""Encoder self-attention in every form exporters write, on hand-built one-layer graphs.

Each form is checked two ways: it becomes one fused op (no Softmax left) AND ONNX Runtime
on the fused graph computes what it computes on the unfused one, on several shapes with
left and right padding. The forms: bias Add on either side of the MatMul; tf2onnx's
flattened (Tensordot) projections with and without a bias (TF drops zero biases, and the
head split then reads the 2-D product); raw ``Einsum`` layers; pruned heads and a V wider
than Q/K; keras2onnx's ``scores - 10000 * (1 - mask)`` and heads merged straight into 2-D;
torch's always-true mask of an encoder called without one. Then what must not fuse, and
the num_heads / hidden_size checks.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tfopt.cli import main
from tfopt.errors import TfoptError
from tfopt.graph import count_ops, fuse_model
from tfopt.results import ModelInfo

D = 32  # model width
RNG = np.random.default_rng(7)
SHAPES = ((1, 1), (2, 5), (3, 7))


class Graph:
    """A tiny graph under construction: nodes, initializers and fresh names."""

    def __init__(self):
        self.nodes, self.inits, self._count = [], [], 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, value, dtype=np.float32, stem="c") -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values) -> str:
        return self.const(values, np.int64, "i")

    def op(self, op_type, *inputs, **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def weight(self, *shape) -> str:
        return self.const(RNG.normal(0, 0.3, size=shape), stem="w")

    def dims_of(self, value: str, start: int, end: int, cast: bool = False) -> str:
        """Shape(value)[start:end], as tf2onnx writes it (optionally through int32 casts)."""
        shape = self.op("Shape", value)
        if cast:
            shape = self.op("Cast", shape, to=TensorProto.INT32)
            return self.op("Slice", shape, self.const([start], np.int32), self.const([end], np.int32), self.const([0], np.int32))
        return self.op("Slice", shape, self.ints([start]), self.ints([end]), self.ints([0]))


def _project(g: Graph, x: str, width: int, heads: int, head_size: int, form: str) -> str:
    """x -> (batch, heads, sequence, head_size) in the given projection form."""
    w = g.weight(D, width)
    bias = g.const(RNG.normal(0, 0.1, size=width))
    if form in ("matmul_bias", "bias_matmul"):
        product = g.op("MatMul", x, w)
        added = g.op("Add", product, bias) if form == "matmul_bias" else g.op("Add", bias, product)
        split = g.op("Reshape", added, g.ints([0, 0, heads, head_size]))
    elif form == "tensordot":  # flatten, 2-D MatMul, unflatten to x's own (batch, sequence), bias, head split
        flat = g.op("Reshape", x, g.ints([-1, D]))
        unflat = g.op("Reshape", g.op("MatMul", flat, w), g.op("Concat", g.dims_of(x, 0, 2), g.ints([width]), axis=0))
        target = g.op("Concat", g.dims_of(x, 0, 1), g.ints([-1, heads, head_size]), axis=0)
        split = g.op("Reshape", g.op("Add", unflat, bias), target)
    elif form == "tensordot_stacked":  # keras2onnx: the flatten target is stack(prod(shape[:2]), prod(shape[2:]))
        rows = g.op("ReduceProd", g.dims_of(x, 0, 2), keepdims=1)
        columns = g.op("ReduceProd", g.dims_of(x, 2, 3), keepdims=1)
        flat = g.op("Reshape", x, g.op("Concat", rows, columns, axis=0))
        unflat = g.op("Reshape", g.op("MatMul", flat, w), g.op("Concat", g.dims_of(x, 0, 2), g.ints([width]), axis=0))
        target = g.op("Concat", g.dims_of(x, 0, 1), g.ints([-1, heads, head_size]), axis=0)
        split = g.op("Reshape", g.op("Add", unflat, bias), target)
    elif form == "tensordot_nobias":  # TF dropped the zero bias: the head split reads the 2-D product
        flat = g.op("Reshape", x, g.ints([-1, D]))
        parts = g.op("Concat", g.dims_of(x, 0, 1, cast=True), g.const([-1, heads, head_size], np.int32), axis=0)
        split = g.op("Reshape", g.op("MatMul", flat, w), g.op("Cast", parts, to=TensorProto.INT64))
    elif form == "tensordot_seq_first":  # NOT x's (batch, sequence): (sequence, batch) order
        flat = g.op("Reshape", x, g.ints([-1, D]))
        target = g.op("Concat", g.dims_of(x, 1, 2), g.ints([-1, heads, head_size]), axis=0)
        split = g.op("Reshape", g.op("MatMul", flat, w), target)
        return g.op("Transpose", split, perm=[1, 2, 0, 3])  # what the rest of the graph expects, computed honestly
    else:
        raise ValueError(form)
    return g.op("Transpose", split, perm=[0, 2, 1, 3])


def _mask_term(g: Graph, mask_form: str, x: str) -> tuple[str | None, str]:
    """(what to add to or subtract from the scores, "add" | "sub")."""
    if mask_form == "none":
        return None, "add"
    if mask_form in ("additive", "sub", "inverted", "causal_padding"):
        m = g.op("Cast", g.op("Unsqueeze", "mask", g.ints([1, 2])), to=TensorProto.FLOAT)
        dropped = g.op("Sub", g.const(1.0), m)
        if mask_form == "inverted":  # drops the real tokens, keeps the padding
            return g.op("Mul", m, g.const(-10000.0)), "add"
        if mask_form == "causal_padding":  # a decoder's mask: padding AND j <= i
            size = g.op("Squeeze", g.dims_of(x, 1, 2), g.ints([0]))
            positions = g.op("Range", g.const(0, np.int64), size, g.const(1, np.int64))
            later = g.op("Greater", g.op("Unsqueeze", positions, g.ints([0])), g.op("Unsqueeze", positions, g.ints([1])))
            future = g.op("Mul", g.op("Cast", later, to=TensorProto.FLOAT), g.const(-10000.0))
            return g.op("Add", g.op("Mul", dropped, g.const(-10000.0)), future), "add"
        if mask_form == "sub":  # keras2onnx: scores - 10000 * (1 - mask)
            return g.op("Mul", dropped, g.const(10000.0)), "sub"
        return g.op("Mul", dropped, g.const(-10000.0)), "add"
    # torch's dynamo export of an encoder called without a mask
    seq = g.op("Squeeze", g.dims_of(x, 1, 2), g.ints([0]))
    target = g.op("Concat", g.dims_of(x, 0, 1), g.ints([1]), g.dims_of(x, 1, 2), g.dims_of(x, 1, 2), axis=0)
    if mask_form == "all_true_const":
        condition = g.op("Expand", g.const(np.ones((1, 1, 1, 1), bool), bool), target)
    else:
        positions = g.op("Unsqueeze", g.op("Range", g.const(0, np.int64), seq, g.const(1, np.int64)), g.ints([0, 1, 3]))
        low = 1 if mask_form == "range_from_one" else 0  # from one: key 0 masked, NOT an always-true mask
        condition = g.op("Expand", g.op("GreaterOrEqual", positions, g.const(low, np.int64)), target)
    return g.op("Where", condition, g.const(0.0), g.const(-3.4028234663852886e38)), "add"


def attention_model(
    *,
    projection="matmul_bias",
    mask="additive",
    heads=4,
    head_size=8,
    v_head_size=None,
    merge="3d",
    opset=17,
) -> onnx.ModelProto:
    """One self-attention layer with its output projection, y = Attention(x) W_o + b_o."""
    g = Graph()
    v_head_size = v_head_size or head_size
    x = "x"
    q = _project(g, x, heads * head_size, heads, head_size, projection)
    k = _project(g, x, heads * head_size, heads, head_size, projection)
    v = _project(g, x, heads * v_head_size, heads, v_head_size, projection)
    scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.const(1 / math.sqrt(head_size)))
    term, how = _mask_term(g, mask, x)
    if term is not None:
        scores = g.op("Add" if how == "add" else "Sub", scores, term)
    context = g.op("Transpose", g.op("MatMul", g.op("Softmax", scores, axis=-1), v), perm=[0, 2, 1, 3])
    width = heads * v_head_size
    if merge == "2d":  # keras2onnx: heads merged straight into (tokens, width), unflattened after the MatMul
        product = g.op("MatMul", g.op("Reshape", context, g.ints([-1, width])), g.weight(width, D))
        merged = g.op("Reshape", product, g.op("Concat", g.dims_of(x, 0, 2), g.ints([D]), axis=0))
    else:
        merged = g.op("MatMul", g.op("Reshape", context, g.ints([0, 0, width])), g.weight(width, D))
    g.nodes.append(helper.make_node("Add", [merged, g.const(RNG.normal(0, 0.1, size=D))], ["y"]))
    return _model(g, masked=mask in ("additive", "sub", "inverted", "causal_padding"), opset=opset)


def einsum_attention_model(*, mask="additive") -> onnx.ModelProto:
    """Keras' attention with raw Einsum layers (per-head bias), as tf2onnx writes them when it does not lower them."""
    g, heads, size = Graph(), 4, 8
    q, k, v = (
        g.op("Add", g.op("Einsum", "x", g.weight(D, heads, size), equation="abc,cde->abde"), g.weight(heads, size))
        for _ in range(3)
    )
    q = g.op("Mul", q, g.const(1 / math.sqrt(size)))
    scores = g.op("Einsum", k, q, equation="aecd,abcd->acbe")
    term, _ = _mask_term(g, mask, "x")
    if term is not None:
        scores = g.op("Add", scores, term)
    context = g.op("Einsum", g.op("Softmax", scores, axis=-1), v, equation="acbe,aecd->abcd")
    out = g.op("Einsum", context, g.weight(heads, size, D), equation="abcd,cde->abe")
    g.nodes.append(helper.make_node("Add", [out, g.const(RNG.normal(0, 0.1, size=D))], ["y"]))
    return _model(g, masked=mask != "none")


def _model(g: Graph, *, masked: bool, opset: int = 17, output_shape=("batch", "sequence", D)) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", D])]
    if masked:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "sequence"]))
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)
    graph = helper.make_graph(g.nodes, "attention", inputs, [output], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(model: onnx.ModelProto, batch: int, sequence: int) -> dict:
    feeds = {"x": RNG.normal(size=(batch, sequence, D)).astype(np.float32)}
    if any(i.name == "mask" for i in model.graph.input):
        mask = np.ones((batch, sequence), np.int64)
        if batch > 1:
            mask[1, sequence - 2 :] = 0  # right padding
        if batch > 2:
            mask[2, :2] = 0  # left padding
        feeds["mask"] = mask
    return feeds


def _run(model, feeds):
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _fuse_for(proto, target="cpu", **info):
    model = ir.serde.deserialize_model(proto)
    stats = fuse_model(model, ModelInfo(model_type="bert", **info), target=target)
    return model, stats


def _max_diff(original, fused, skip_first_query: bool = False) -> float:
    """Max |difference| over valid positions; ``skip_first_query``: position 0 too (a mask that drops every key there)."""
    worst = 0.0
    for batch, sequence in SHAPES:
        feeds = _feeds(original, batch, sequence)
        expected, actual = _run(original, feeds), _run(fused, feeds)
        assert actual.shape == expected.shape
        valid = feeds["mask"].astype(bool) if "mask" in feeds else np.ones((batch, sequence), bool)
        if skip_first_query:
            valid = valid.copy()
            valid[:, 0] = False
        if valid.any():
            worst = max(worst, float(np.abs(actual - expected)[valid].max()))
    return worst


def _attention_nodes(model: ir.Model, op_type="MultiHeadAttention"):
    return [node for node in model.graph if node.op_type == op_type]


FORMS = {
    "bias_after_matmul": dict(projection="matmul_bias"),
    "bias_before_matmul": dict(projection="bias_matmul"),
    "tensordot": dict(projection="tensordot"),
    "tensordot_zero_bias_dropped": dict(projection="tensordot_nobias"),
    "tensordot_zero_bias_dropped_opset13": dict(projection="tensordot_nobias", opset=13),
    "pruned_heads": dict(heads=3),
    "v_wider_than_qk": dict(v_head_size=12),
    "keras2onnx_sub_mask_2d_merge": dict(projection="tensordot", mask="sub", merge="2d"),
    "keras2onnx_stacked_flatten": dict(projection="tensordot_stacked"),
    "no_mask": dict(mask="none"),
    "always_true_range_mask": dict(mask="all_true_range"),
    "always_true_constant_mask": dict(mask="all_true_const", projection="tensordot_nobias"),
    "always_true_constant_mask_linear": dict(mask="all_true_const"),  # ViT's dynamo export: Where(Expand(True), 0, -3.4e38)
}


@pytest.mark.parametrize("form", list(FORMS))
def test_attention_form_becomes_one_op_and_keeps_parity(form):
    original = attention_model(**FORMS[form])
    fused, stats = _fuse_for(original)
    counts = count_ops(fused)
    assert counts.get("MultiHeadAttention") == 1 and "Softmax" not in counts, counts
    (node,) = _attention_nodes(fused)
    heads = FORMS[form].get("heads", 4)
    assert node.attributes.get_int("num_heads") == heads  # detected from the graph
    masked = FORMS[form].get("mask", "additive") in ("additive", "sub")
    assert (len(node.inputs) > 4 and node.inputs[4] is not None) == masked  # an always-true mask is no mask
    assert _max_diff(original, fused) < 1e-5


@pytest.mark.parametrize("mask", ["additive", "none"])
def test_raw_einsum_attention_becomes_one_op_and_keeps_parity(mask):
    original = einsum_attention_model(mask=mask)
    fused, stats = _fuse_for(original)
    counts = count_ops(fused)
    assert counts.get("MultiHeadAttention") == 1 and "Softmax" not in counts and "Einsum" not in counts, counts
    assert stats.rule_counts["EinsumAsMatMul"] == 6  # Q, K, V and the output layer; scores and context
    assert _max_diff(original, fused) < 1e-5


@pytest.mark.parametrize("form", ["v_wider_than_qk", "tensordot_zero_bias_dropped"])
def test_cuda_target_packs_unequal_widths(form):
    original = attention_model(**FORMS[form])
    fused, _ = _fuse_for(original, target="cuda")
    (node,) = _attention_nodes(fused, "Attention")
    sizes = list(node.attributes.get_ints("qkv_hidden_sizes", []))
    assert sizes == ([32, 32, 48] if form == "v_wider_than_qk" else [])
    assert _max_diff(original, fused) < 1e-5


@pytest.mark.parametrize("case", ["range_from_one", "inverted", "causal_padding", "seq_first_head_split"])
def test_forms_that_are_not_attention_as_fused_are_left_alone(case):
    # A mask that drops key 0 for everyone is not "no mask"; one that keeps only the padding,
    # or adds a causal part, reads the mask input but is not its key padding; a head split in
    # (sequence, batch) order is not x's (batch, sequence): fusing any would compute something else.
    kwargs = dict(projection="tensordot_seq_first", mask="none") if case == "seq_first_head_split" else dict(mask=case)
    original = attention_model(**kwargs)
    fused, stats = _fuse_for(original)
    assert stats.rule_counts["Attention"] == 0  # no MultiHeadAttention with the raw mask as mask_index
    # ONNX's Attention may take the graph's own scores and additive mask as they are: the same function,
    # except on a query row whose every key is masked (range_from_one's query 0): ONNX Runtime's kernel
    # writes zeros there, the exported softmax the mean of the values -- as for padded queries (fusions.md).
    taken = stats.rule_counts.get("AdditiveMaskAttention", 0)
    assert "Softmax" in count_ops(fused) or taken == 1
    if case == "seq_first_head_split":
        assert stats.rule_counts["FlattenedHeadSplit"] == 0
    assert _max_diff(original, fused, skip_first_query=bool(taken) and case == "range_from_one") < 1e-5


@pytest.mark.parametrize(
    "form, num_heads, hidden_size",
    [("bias_after_matmul", 4, 32), ("tensordot_zero_bias_dropped", 4, 0), ("pruned_heads", 4, 32), ("pruned_heads", 3, 24)],
)
def test_right_explicit_values_fuse_as_detected(form, num_heads, hidden_size):
    # A pruned model's config still says 4 heads of a 32-wide model: its layers keep 3 heads of 8.
    original = attention_model(**FORMS[form])
    fused, _ = _fuse_for(original, num_heads=num_heads, hidden_size=hidden_size)
    (node,) = _attention_nodes(fused)
    assert node.attributes.get_int("num_heads") == FORMS[form].get("heads", 4)
    assert _max_diff(original, fused) < 1e-5


@pytest.mark.parametrize(
    "form, num_heads, hidden_size, message",
    [
        ("bias_after_matmul", 8, 0, "num_heads=8 contradicts the model: its attention splits 32 values into 4 heads of 8"),
        ("bias_after_matmul", 2, 32, "num_heads=2 contradicts the model"),
        ("bias_after_matmul", 4, 64, "hidden_size=64 does not match the model"),
        ("tensordot_zero_bias_dropped", 6, 0, "num_heads=6 contradicts the model"),
        ("pruned_heads", 2, 0, "num_heads=2 contradicts the model"),
        ("bias_after_matmul", 3, 32, "num_heads=3 does not divide hidden_size=32"),
    ],
)
def test_wrong_explicit_values_are_refused(form, num_heads, hidden_size, message):
    with pytest.raises(TfoptError, match=message):
        _fuse_for(attention_model(**FORMS[form]), num_heads=num_heads, hidden_size=hidden_size)


def test_cli_refuses_wrong_heads_in_one_line_and_writes_nothing(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save(attention_model(projection="tensordot_nobias"), source)
    output = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["optimize", "--input", str(source), "--output", str(output), "--num_heads", "8"])
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "num_heads=8 contradicts the model" in lines[0], result.output
    assert not output.exists() and not list(tmp_path.glob("out.onnx*"))


@pytest.mark.parametrize("order", ["batch_sequence", "sequence_batch"])
def test_tensordot_unflatten_is_dropped_only_when_it_restores_batch_and_sequence(order):
    g = Graph()
    dims = [g.dims_of("x", 0, 1), g.dims_of("x", 1, 2)]
    if order == "sequence_batch":
        dims.reverse()
    flat = g.op("Reshape", "x", g.ints([-1, D]))
    unflat = g.op("Reshape", g.op("MatMul", flat, g.weight(D, 24)), g.op("Concat", *dims, g.ints([24]), axis=0))
    g.nodes.append(helper.make_node("Add", [unflat, g.const(RNG.normal(size=24))], ["y"]))
    original = _model(g, masked=False, output_shape=["d0", "d1", 24])
    fused, stats = _fuse_for(original)
    assert stats.rule_counts["FlattenedMatMul"] == (1 if order == "batch_sequence" else 0)
    for batch, sequence in SHAPES:
        feeds = _feeds(original, batch, sequence)
        np.testing.assert_allclose(_run(fused, feeds), _run(original, feeds), atol=1e-5)
