"""Graph forms found in the wild, not only today's exports: each must fuse fully AND compute the same.

A tiny BERT-like encoder (hidden 32, 2 heads, 2 layers) is written with onnx.helper in the
shape the legacy exporter gives (Range position ids, additive mask, eager attention); each
test varies one thing: how the graph declares its opset, its input dims, its batch size,
how LayerNorm or Gelu is spelled. Every test checks the fused-op counts and compares
ONNX Runtime on the fused model with ONNX Runtime on the unfused input, on several
shapes with padding.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt.graph import count_ops, fuse_model
from tfopt.results import ModelInfo

HIDDEN, HEADS, FFN, LAYERS, VOCAB, POSITIONS = 32, 2, 64, 2, 60, 40
HEAD_SIZE = HIDDEN // HEADS
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
# (batch, sequence, padded tokens in row 0): several shapes, padding included.
SHAPES = ((1, 5, 0), (2, 7, 3), (3, 4, 1))
FLOAT_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


class Builder:
    """Appends nodes/initializers with unique names; operand order is the caller's (forms differ in it)."""

    def __init__(self, dtype=np.float32, seed=0):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value, dtype=None, hint="c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype or self.dtype), name))
        return name

    def ints(self, values) -> str:
        return self.const(values, dtype=np.int64, hint="i")

    def weights(self, *shape, scale=0.2) -> str:
        return self.const(self.rng.normal(size=shape) * scale, hint="w")

    def dense(self, x: str, width_in: int, width_out: int) -> str:
        """MatMul + bias, bias first as the legacy exporter writes it."""
        return self.op("Add", self.weights(width_out, scale=0.1), self.op("MatMul", x, self.weights(width_in, width_out)))


# --- LayerNorm spellings -------------------------------------------------------------------


def layer_norm(b: Builder, x: str, form: str) -> str:
    gamma = b.const(1 + 0.1 * b.rng.normal(size=HIDDEN), hint="gamma")
    beta = b.const(0.1 * b.rng.normal(size=HIDDEN), hint="beta")
    if form == "op":
        return b.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=1e-5)
    if form == "cast_fp32":  # a float16 model normalising in float32 between Casts (torch, opset < 17)
        wide = b.op("Cast", x, to=TensorProto.FLOAT)
        normalized = _normalize(b, wide, "pow_div", np.float32)
        return b.op("Add", b.op("Mul", b.op("Cast", normalized, to=FLOAT_TYPES[b.dtype]), gamma), beta)
    if form == "cast_affine_fp32":  # the whole LayerNorm (gamma, beta too) in float32 between Casts
        wide = b.op("Cast", x, to=TensorProto.FLOAT)
        gamma32 = b.const(1 + 0.1 * b.rng.normal(size=HIDDEN), dtype=np.float32, hint="gamma")
        beta32 = b.const(0.1 * b.rng.normal(size=HIDDEN), dtype=np.float32, hint="beta")
        out = b.op("Add", b.op("Mul", _normalize(b, wide, "pow_div", np.float32), gamma32), beta32)
        return b.op("Cast", out, to=FLOAT_TYPES[b.dtype])
    return b.op("Add", b.op("Mul", _normalize(b, x, form, b.dtype), gamma), beta)


def _normalize(b: Builder, x: str, form: str, dtype) -> str:
    """(x - mean) / sqrt(var + eps), spelled as ``form``."""
    mean = b.op("ReduceMean", x, axes=[-1])
    centered = b.op("Sub", x, mean)
    if form == "mul_reciprocal":  # d*d, then d * Reciprocal(Sqrt(var + eps)), reciprocal first
        square = b.op("Mul", centered, centered)
        variance = b.op("ReduceMean", square, axes=[-1])
        std = b.op("Sqrt", b.op("Add", b.const(1e-5, dtype=dtype), variance))
        return b.op("Mul", b.op("Reciprocal", std), centered)
    if form == "one_over_std":  # d * (1 / Sqrt(var + eps))
        variance = b.op("ReduceMean", b.op("Pow", centered, b.const(2.0, dtype=dtype)), axes=[-1])
        std = b.op("Sqrt", b.op("Add", variance, b.const(1e-5, dtype=dtype)))
        return b.op("Mul", centered, b.op("Div", b.const(1.0, dtype=dtype), std))
    if form == "twice_centered":  # x - mean written twice: once for the variance, once for the numerator
        variance = b.op("ReduceMean", b.op("Pow", centered, b.const(2.0, dtype=dtype)), axes=[-1])
        std = b.op("Sqrt", b.op("Add", variance, b.const(1e-5, dtype=dtype)))
        return b.op("Div", b.op("Sub", x, mean), std)
    assert form == "pow_div", form
    variance = b.op("ReduceMean", b.op("Pow", centered, b.const(2.0, dtype=dtype)), axes=[-1])
    std = b.op("Sqrt", b.op("Add", variance, b.const(1e-5, dtype=dtype)))
    return b.op("Div", centered, std)


# --- Gelu spellings ------------------------------------------------------------------------


def gelu(b: Builder, x: str, form: str, order: random.Random | None = None) -> str:
    """``form`` written with Mul/Add operands in the order ``order`` draws (the default: as given)."""

    def mul(p, q):
        return b.op("Mul", *((q, p) if order and order.random() < 0.5 else (p, q)))

    def add(p, q):
        return b.op("Add", *((q, p) if order and order.random() < 0.5 else (p, q)))

    c = lambda value: b.const(value)  # noqa: E731
    if form == "onnx":
        return b.op("Gelu", x)
    if form == "erf":  # x * 0.5 * (1 + erf(x / sqrt 2)), halves and operands swapped
        return mul(add(c(1.0), b.op("Erf", b.op("Div", x, c(math.sqrt(2))))), mul(c(0.5), x))
    if form == "quick":  # x * sigmoid(1.702 x)
        return mul(b.op("Sigmoid", mul(c(1.702), x)), x)
    if form == "tanh_cubic":  # 0.5 x (1 + tanh(c (x + a x^3)))
        inner = mul(c(SQRT_2_OVER_PI), add(mul(c(0.044715), b.op("Pow", x, c(3.0))), x))
        return mul(mul(c(0.5), x), add(c(1.0), b.op("Tanh", inner)))
    if form == "tanh_cubic_mul":  # x^3 as x * x * x
        cube = mul(mul(x, x), x)
        inner = mul(add(x, mul(cube, c(0.044715))), c(SQRT_2_OVER_PI))
        return mul(x, mul(add(b.op("Tanh", inner), c(1.0)), c(0.5)))
    if form == "tanh_square":  # HF gelu_fast: 0.5 x (1 + tanh(x c (1 + a x x)))
        inner = mul(mul(x, c(SQRT_2_OVER_PI)), add(c(1.0), mul(mul(c(0.044715), x), x)))
        return mul(mul(x, c(0.5)), add(c(1.0), b.op("Tanh", inner)))
    raise AssertionError(form)


# --- the encoder ---------------------------------------------------------------------------


def encoder(
    *,
    ln="op",
    act="erf",
    dtype=np.float32,
    dims=("batch", "sequence"),
    opset_domain="",
    layers=LAYERS,
    seed=0,
    mask_first=False,
) -> onnx.ModelProto:
    """A BERT-like encoder, legacy-export style; ``dims`` is how the inputs declare (batch, sequence).

    ``mask_first``: the mask is the first operand of the scores' Add (ONNX Runtime's
    ``attention_fusion_reverse_add_order`` graph).
    """
    b = Builder(dtype, seed)
    elem = FLOAT_TYPES[dtype]
    word = b.op("Gather", b.weights(VOCAB, HIDDEN, scale=1.0), "input_ids")
    segment = b.op("Gather", b.weights(2, HIDDEN, scale=1.0), "token_type_ids")
    length = b.op("Gather", b.op("Shape", "input_ids"), b.ints(1), axis=0)
    positions = b.op("Unsqueeze", b.op("Range", b.ints(0), length, b.ints(1)), b.ints([0]))
    position = b.op("Gather", b.weights(POSITIONS, HIDDEN, scale=1.0), positions)
    hidden = layer_norm(b, b.op("Add", b.op("Add", word, segment), position), ln)
    keep = b.op("Cast", b.op("Unsqueeze", "attention_mask", b.ints([1, 2])), to=elem)
    mask = b.op("Mul", b.op("Sub", b.const(1.0), keep), b.const(-10000.0))
    for _ in range(layers):
        heads = []
        for perm in ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]):
            split = b.op("Reshape", b.dense(hidden, HIDDEN, HIDDEN), b.ints([0, 0, HEADS, HEAD_SIZE]))
            heads.append(b.op("Transpose", split, perm=perm))
        q, k_t, v = heads
        scaled = b.op("Div", b.op("MatMul", q, k_t), b.const(math.sqrt(HEAD_SIZE)))
        scores = b.op("Add", mask, scaled) if mask_first else b.op("Add", scaled, mask)
        context = b.op("MatMul", b.op("Softmax", scores, axis=-1), v)
        merged = b.op("Reshape", b.op("Transpose", context, perm=[0, 2, 1, 3]), b.ints([0, 0, HIDDEN]))
        hidden = layer_norm(b, b.op("Add", b.dense(merged, HIDDEN, HIDDEN), hidden), ln)
        inner = gelu(b, b.dense(hidden, HIDDEN, FFN), act)
        hidden = layer_norm(b, b.op("Add", b.dense(inner, FFN, HIDDEN), hidden), ln)
    b.nodes.append(helper.make_node("Identity", [hidden], ["last_hidden_state"]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, list(dims)) for n in ("input_ids", "attention_mask", "token_type_ids")]
    output = helper.make_tensor_value_info("last_hidden_state", elem, [*dims, HIDDEN])
    graph = helper.make_graph(b.nodes, "tiny_encoder", inputs, [output], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(opset_domain, 17)])
    model.ir_version = 8
    return model


def fully_fused(layers=LAYERS, gelu_op="BiasGelu") -> dict[str, int]:
    return {
        "EmbedLayerNormalization": 1,
        "MultiHeadAttention": layers,
        "SkipLayerNormalization": 2 * layers,
        gelu_op: layers,
    }


# Ops a decomposed LayerNorm / Gelu / attention leaves behind when a fusion does not happen.
LEFTOVERS = {"ReduceMean", "Sqrt", "Reciprocal", "Pow", "Erf", "Tanh", "Sigmoid", "Softmax", "LayerNormalization", "Gelu"}


# --- helpers -------------------------------------------------------------------------------


def _session(model: onnx.ModelProto | ir.Model) -> ort.InferenceSession:
    """The fused model as users run it; the unfused reference without ONNX Runtime's own rewrites.

    ORT's LayerNormFusion breaks the float32-between-Casts LayerNorm of a float16 model
    ("LayerNormalization bound to different types"), so the reference runs unoptimized.
    """
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not isinstance(model, ir.Model):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _feeds(batch: int, sequence: int, padded: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 97 * batch + sequence)
    mask = np.ones((batch, sequence), np.int64)
    if padded:
        mask[0, sequence - padded :] = 0  # right padding in row 0
        if batch > 2:
            mask[2, :padded] = 0  # left padding in row 2
    return {
        "input_ids": rng.integers(0, VOCAB, (batch, sequence)),
        "attention_mask": mask,
        "token_type_ids": rng.integers(0, 2, (batch, sequence)),
    }


def fuse(proto: onnx.ModelProto, **kwargs) -> tuple[ir.Model, object]:
    model = ir.serde.deserialize_model(onnx.ModelProto.FromString(proto.SerializeToString()))
    stats = fuse_model(model, ModelInfo(model_type="bert", num_layers=kwargs.pop("layers", LAYERS)), **kwargs)
    return model, stats


def max_diff(reference: onnx.ModelProto, fused: ir.Model, shapes=SHAPES) -> float:
    """Largest |ORT(fused) - ORT(reference)| over ``shapes`` (every position: no row is all padding)."""
    expected_session, actual_session = _session(reference), _session(fused)
    worst = 0.0
    for batch, sequence, padded in shapes:
        feeds = _feeds(batch, sequence, padded)
        expected = expected_session.run(None, feeds)[0].astype(np.float32)
        actual = actual_session.run(None, feeds)[0].astype(np.float32)
        assert actual.shape == expected.shape
        worst = max(worst, float(np.abs(actual - expected).max()))
    return worst


def assert_fully_fused(fused: ir.Model, stats, expected: dict[str, int]):
    counts = count_ops(fused)
    assert {op: counts.get(op, 0) for op in expected} == expected, counts
    assert not LEFTOVERS & set(counts), counts
    assert stats.missing == []


# --- the base form, so the variants below compare against a form known to fuse ---------------


def test_base_encoder_fuses_fully_and_matches():
    original = encoder()
    before = count_ops(ir.serde.deserialize_model(original))
    assert before["Softmax"] == LAYERS and before["LayerNormalization"] == 2 * LAYERS + 1
    fused, stats = fuse(original)
    assert_fully_fused(fused, stats, fully_fused())
    assert max_diff(original, fused) < 2e-5


# --- opset imports naming the default domain "ai.onnx" -------------------------------------


def test_mask_added_as_the_first_operand():
    original = encoder(mask_first=True)
    fused, stats = fuse(original)
    assert_fully_fused(fused, stats, fully_fused())
    assert max_diff(original, fused) < 2e-5


def test_default_domain_spelled_ai_onnx(tmp_path):
    original = encoder(opset_domain="ai.onnx")
    _session(original)  # ONNX Runtime takes the spelling
    fused, stats = fuse(original)
    assert_fully_fused(fused, stats, fully_fused())
    assert fused.opset_imports.get("") == 17 and "ai.onnx" not in fused.opset_imports
    ir.save(fused, tmp_path / "fused.onnx")
    written = {o.domain: o.version for o in onnx.load(str(tmp_path / "fused.onnx")).opset_import}
    assert written == {"": 17, "com.microsoft": 1}
    assert max_diff(original, fused) < 2e-5


# --- unknown dims spelled -1, 0, "", "?" or not at all ---------------------------------------


def _with_dims(model: onnx.ModelProto, spelling) -> onnx.ModelProto:
    """The same model, with every symbolic dim of its inputs and outputs spelled ``spelling``."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in (*model.graph.input, *model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()
                if isinstance(spelling, int):
                    dim.dim_value = spelling
                elif spelling is not None:
                    dim.dim_param = spelling
    return model


@pytest.mark.parametrize("spelling", [-1, 0, "", "?", None], ids=["minus1", "zero", "empty", "question", "unset"])
def test_unknown_dims_stay_dynamic(spelling):
    symbolic = encoder()
    original = _with_dims(symbolic, spelling)
    fused, stats = fuse(original)
    assert_fully_fused(fused, stats, fully_fused())
    for value in fused.graph.inputs:  # each unknown dim is a symbol of its own, not a number
        assert all(isinstance(dim, ir.SymbolicDim) and dim.value for dim in value.shape.dims), value.shape
    # ONNX Runtime refuses every feed of a dim declared 0, so the reference is the same model with named dims.
    assert max_diff(symbolic, fused) < 2e-5
    if spelling != 0:
        assert max_diff(original, fused) < 2e-5


def test_inputs_without_any_shape():
    original = encoder()
    for value in original.graph.input:
        value.type.tensor_type.ClearField("shape")
    fused, stats = fuse(original)
    counts = count_ops(fused)
    assert counts.get("SkipLayerNormalization") == 2 * LAYERS and counts.get("BiasGelu") == LAYERS, counts
    assert max_diff(original, fused) < 2e-5


# --- static shapes, batch 1 included ----------------------------------------------------------


@pytest.mark.parametrize("batch,sequence", [(1, 6), (1, 9), (2, 5)])
def test_static_shapes_fuse_fully(batch, sequence):
    original = encoder(dims=(batch, sequence))
    fused, stats = fuse(original)
    assert_fully_fused(fused, stats, fully_fused())
    shapes = [(batch, sequence, 0), (batch, sequence, 2)]
    assert max_diff(original, fused, shapes) < 2e-5


def _residual_block(shape_a, shape_b) -> onnx.ModelProto:
    b = Builder()
    total = b.op("Add", b.dense("a", HIDDEN, HIDDEN), "b")
    out = layer_norm(b, total, "op")
    b.nodes.append(helper.make_node("Identity", [out], ["y"]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("a", shape_a), ("b", shape_b))]
    graph = helper.make_graph(b.nodes, "residual", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run_block(model, fused, shape_a, shape_b):
    rng = np.random.default_rng(3)
    feeds = {"a": rng.normal(size=shape_a).astype(np.float32), "b": rng.normal(size=shape_b).astype(np.float32)}
    expected = _session(model).run(None, feeds)[0]
    np.testing.assert_allclose(_session(fused).run(None, feeds)[0], expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize(
    "shape_a,shape_b",
    [([1, 6, HIDDEN], [1, 6, HIDDEN]), ([2, 6, HIDDEN], [1, 6, HIDDEN]), ([1, 6, HIDDEN], [3, 6, HIDDEN]), ([3, 6, HIDDEN], [6, HIDDEN])],
    ids=["batch1_equal", "skip_is_row", "input_is_row", "skip_is_2d"],
)
def test_residual_add_with_skip_shapes_the_op_takes(shape_a, shape_b):
    model = _residual_block(shape_a, shape_b)
    fused, _ = fuse(model)
    assert count_ops(fused) == {"MatMul": 1, "SkipLayerNormalization": 1}
    _run_block(model, fused, shape_a, shape_b)


@pytest.mark.parametrize(
    "shape_a,shape_b",
    [([2, 1, HIDDEN], [2, 6, HIDDEN]), ([2, 6, HIDDEN], [2, 1, HIDDEN]), ([1, 6, HIDDEN], [2, 1, 6, HIDDEN])],
    ids=["one_query_row", "one_skip_row", "rank_grows"],
)
def test_broadcasting_add_is_not_a_skip_connection(shape_a, shape_b):
    model = _residual_block(shape_a, shape_b)
    fused, _ = fuse(model)
    counts = count_ops(fused)
    assert "SkipLayerNormalization" not in counts and counts.get("LayerNormalization") == 1
    _run_block(model, fused, shape_a, shape_b)


# --- LayerNorm spellings ------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pow_div", "mul_reciprocal", "one_over_std", "twice_centered"])
def test_decomposed_layer_norm_forms(form):
    original = encoder(ln=form)
    before = count_ops(ir.serde.deserialize_model(original))
    assert before.get("ReduceMean") == 2 * (2 * LAYERS + 1) and "LayerNormalization" not in before
    fused, stats = fuse(original)
    assert_fully_fused(fused, stats, fully_fused())
    assert max_diff(original, fused) < 2e-5


@pytest.mark.parametrize("form", ["cast_fp32", "cast_affine_fp32"])
def test_half_precision_layer_norm_between_casts(form):
    original = encoder(ln=form, dtype=np.float16)
    fused, stats = fuse(original)
    counts = count_ops(fused)
    assert {op: counts.get(op, 0) for op in ("EmbedLayerNormalization", "SkipLayerNormalization")} == {
        "EmbedLayerNormalization": 1,
        "SkipLayerNormalization": 2 * LAYERS,
    }, counts
    assert not {"ReduceMean", "Sqrt", "LayerNormalization"} & set(counts), counts
    assert counts.get("Cast", 0) < count_ops(ir.serde.deserialize_model(original))["Cast"]
    # float16 outputs of a LayerNorm (values ~1): a few units in the last place.
    assert max_diff(original, fused) < 2e-2


def test_layer_norm_reducing_without_keepdims_is_left_alone():
    """ReduceMean(keepdims=0) on a (1, H, H) tensor: Sub then broadcasts the means along the wrong axis."""
    b = Builder()
    mean = b.op("ReduceMean", "x", axes=[-1], keepdims=0)
    centered = b.op("Sub", "x", mean)
    variance = b.op("ReduceMean", b.op("Mul", centered, centered), axes=[-1], keepdims=0)
    normalized = b.op("Div", centered, b.op("Sqrt", b.op("Add", variance, b.const(1e-5))))
    out = b.op("Add", b.op("Mul", normalized, b.const(np.ones(HIDDEN))), b.const(np.zeros(HIDDEN)))
    b.nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(
        b.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, HIDDEN, HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fused, _ = fuse(model)
    assert "LayerNormalization" not in count_ops(fused)
    x = np.random.default_rng(0).normal(size=(1, HIDDEN, HIDDEN)).astype(np.float32)
    np.testing.assert_allclose(_session(fused).run(None, {"x": x})[0], _session(model).run(None, {"x": x})[0], atol=2e-5)


# --- Gelu spellings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form,gelu_op",
    [
        ("erf", "BiasGelu"),
        ("tanh_cubic", "FastGelu"),
        ("tanh_cubic_mul", "FastGelu"),
        ("tanh_square", "FastGelu"),
        ("quick", "QuickGelu"),
    ],
)
def test_gelu_forms_in_the_encoder(form, gelu_op):
    original = encoder(act=form)
    fused, stats = fuse(original)
    assert_fully_fused(fused, stats, fully_fused(gelu_op=gelu_op))
    if gelu_op == "FastGelu":  # the bias Add folded into the op
        assert all(len(n.inputs) == 2 for n in fused.graph if n.op_type == "FastGelu")
    if gelu_op == "QuickGelu":
        assert all(n.attributes.get_float("alpha") == pytest.approx(1.702) for n in fused.graph if n.op_type == "QuickGelu")
    assert max_diff(original, fused) < 2e-5


def _activation(form: str, seed: int) -> onnx.ModelProto:
    b = Builder(seed=seed)
    out = gelu(b, b.dense("x", HIDDEN, HIDDEN), form, order=random.Random(seed))
    b.nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(
        b.nodes, "act", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _check_activation(model, fused, tol=2e-5):
    for shape in ((1, 3, HIDDEN), (2, 5, HIDDEN)):
        x = np.random.default_rng(shape[1]).normal(size=shape).astype(np.float32) * 3
        np.testing.assert_allclose(_session(fused).run(None, {"x": x})[0], _session(model).run(None, {"x": x})[0], atol=tol, rtol=0)


@pytest.mark.parametrize(
    "form,fused_op,seed",
    [*((f, "FastGelu", s) for f, s in itertools.product(["tanh_cubic", "tanh_cubic_mul", "tanh_square"], range(4))),
     *(("erf", "BiasGelu", s) for s in range(3)),
     *(("quick", "QuickGelu", s) for s in range(3))],
)
def test_activation_in_any_operand_order(form, fused_op, seed):
    """Each binary Mul/Add written with its operands in a random order (seeded)."""
    model = _activation(form, seed)
    fused, _ = fuse(model)
    counts = count_ops(fused)
    assert counts.get(fused_op) == 1 and not {"Tanh", "Erf", "Sigmoid", "Pow"} & set(counts), counts
    _check_activation(model, fused)


@pytest.mark.parametrize(
    "change",
    ["tanh_coefficient", "tanh_half", "quick_alpha", "silu", "shared_cube"],
)
def test_formulas_that_are_not_gelu_are_left_alone(change):
    b = Builder()
    x = b.dense("x", HIDDEN, HIDDEN)
    c = b.const
    if change in ("tanh_coefficient", "tanh_half", "shared_cube"):
        a = 0.05 if change == "tanh_coefficient" else 0.044715
        half = 0.6 if change == "tanh_half" else 0.5
        cube = b.op("Pow", x, c(3.0))
        inner = b.op("Mul", b.op("Add", x, b.op("Mul", cube, c(a))), c(SQRT_2_OVER_PI))
        out = b.op("Mul", b.op("Mul", x, c(half)), b.op("Add", b.op("Tanh", inner), c(1.0)))
        if change == "shared_cube":  # x^3 is read elsewhere too
            out = b.op("Add", out, cube)
    else:
        alpha = 1.5 if change == "quick_alpha" else 1.0
        out = b.op("Mul", x, b.op("Sigmoid", b.op("Mul", x, c(alpha))))
    b.nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(
        b.nodes, "act", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fused, _ = fuse(model)
    counts = count_ops(fused)
    assert not {"FastGelu", "QuickGelu", "Gelu", "BiasGelu"} & set(counts), counts
    _check_activation(model, fused)


def test_embedding_layer_norm_already_fused_as_skip_layer_norm_becomes_embed_layer_norm():
    """A graph through another fusion tool: SkipLayerNormalization(word + position lookups, segment lookup)."""
    b = Builder()
    pair = b.op("Add", b.op("Gather", b.weights(VOCAB, HIDDEN, scale=1.0), "input_ids"),
                b.op("Gather", b.weights(POSITIONS, HIDDEN, scale=1.0), "input_ids"))
    segment = b.op("Gather", b.weights(2, HIDDEN, scale=1.0), "token_type_ids")
    gamma, beta = b.const(1 + 0.1 * b.rng.normal(size=HIDDEN)), b.const(0.1 * b.rng.normal(size=HIDDEN))
    b.nodes.append(helper.make_node("SkipLayerNormalization", [pair, segment, gamma, beta], ["y"], domain="com.microsoft", epsilon=1e-5))
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "token_type_ids")]
    graph = helper.make_graph(b.nodes, "skip_ln_embedding", ints, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    fused, _ = fuse(model)
    assert {op: n for op, n in count_ops(fused).items() if op != "Cast"} == {"EmbedLayerNormalization": 1}  # + int32 casts of the ids
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(0, 2, (2, 7)), "token_type_ids": rng.integers(0, 2, (2, 7))}  # ids index every table
    np.testing.assert_allclose(_session(fused).run(None, feed)[0], _session(model).run(None, feed)[0], atol=2e-5)
