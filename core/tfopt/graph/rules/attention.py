"""Self-attention of encoder models -> ORT's ``Attention`` contrib op (packed QKV GEMM).

One rule covers what today's exporters write for BERT-family self-attention:

- Q, K, V: ``Transpose(Reshape(MatMul(x, W) + b), [0, 2, 1, 3])``;
- K^T three ways: ``Transpose(k, [0, 2, 3, 1])`` (eager, legacy sdpa), a 3-D
  reshape/transpose/reshape round trip (dynamo sdpa), or two Transposes;
- the projections with a bias Add or without one (Keras EinsumDense with zero Q/K/V
  bias, which TF folds away);
- the 1/sqrt(head_size) scale on Q and K separately (sdpa), on Q before its head
  transpose (Keras), or on the scores (eager), as Mul or Div;
- the mask as an additive tensor (``Add``), absent, or both; or TF's ``SelectV2``
  (``where(mask, scores, -1e9)``, lowered to ``Cast(m) * s + Cast(!m) * -1e9``), with
  Keras' ``where(mask, probs, 0)`` after Softmax;
- sdpa's NaN guard after Softmax (``Where(IsNaN(p), 0, p)``).

The fused op depends on the target: on CPU, three MatMuls + ``MultiHeadAttention``
(measured 5-6% faster per layer than ``Attention`` at bert-base size, s=128 and 512,
ORT 1.32); on CUDA, ``Attention`` with one packed QKV GEMM, as ORT's own tool does.

The mask subgraph (transformers 5 builds it with GatherND/And/Where) is replaced
by the raw 2-D ``attention_mask`` input, which ``Attention`` accepts as
``mask_index`` for any padding side; the check proves the additive mask is
computed from that input's data alone.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import MS_DOMAIN, constant_array, int32_of, scalar, shape_tail, source_graph_inputs, traced_graph_input

_SCALE_TAGS = ["Mul", "Div", "None"]


def _scaled(op, value, factor, tag):
    return pattern.OrValue([op.Mul(value, factor), op.Div(value, factor), value], tag_var=tag, tag_values=_SCALE_TAGS)


def _scale_of(tag: str, factor) -> float | None:
    if tag == "None":
        return 1.0
    number = scalar(factor)
    if number is None or number == 0:
        return None
    return number if tag == "Mul" else 1.0 / number


def _masked_softmax(op, scores, mask, zero):
    """Softmax over the scores with the mask forms exporters write ("masked" tags which, "guard" what follows).

    TF's ``SelectV2`` keeps the scores where the boolean ``condition`` holds and writes a
    large negative ``fill`` elsewhere; Keras selects the probabilities again after Softmax
    (``cleared`` = 0), which only changes rows with every key masked: ORT's kernels do not
    zero those, as for the other exporters' masks.
    """
    condition = pattern.Var("condition")

    def select(kept, dropped):
        return op.Add(op.Mul(op.Cast(condition), kept), op.Mul(op.Cast(op.Not(condition)), dropped))

    scores = pattern.OrValue(
        [op.Add(scores, mask), select(scores, pattern.Var("fill")), scores],
        tag_var="masked",
        tag_values=["add", "select", "none"],
    )
    probs = op.Softmax(scores, _outputs=["probs"])
    return pattern.OrValue(
        [op.Where(op.IsNaN(probs), zero, probs), select(probs, pattern.Var("cleared")), probs],
        tag_var="guard",
        tag_values=["nan", "select", "none"],
    )


def _is_key_mask(condition: ir.Value, mask_input: ir.Value, graph: ir.Graph) -> bool:
    """``condition`` is ``mask_input != 0`` (Casts) laid out as (batch, 1, 1, keys) (Unsqueeze/Reshape only).

    A select is exact to replace by ``mask_index`` only if it keeps the scores where the
    raw mask is non-zero; an inverted or per-query condition must not fuse.
    """
    if traced_graph_input(condition, graph) is not mask_input:
        return False
    shape = condition.shape
    return shape is None or (shape.rank() == 4 and shape[1] == 1 and shape[2] == 1)


class SelfAttention(pattern.RewriteRuleClassBase):
    def __init__(self, num_heads: int = 0, target: str = "cpu"):
        # remove_nodes=False: exports take Shape() of intermediate Q/K/V tensors to build
        # the Reshape targets inside this very pattern; those uses die with the pattern,
        # and the cleanup pass removes the dead chain. Real outside uses keep it alive (correct, slower).
        super().__init__(name="Attention", remove_nodes=False)
        self.num_heads = num_heads
        self.target = target
        self._packed: dict[tuple[int, ...], tuple[ir.Value, ir.Value]] = {}

    def setup(self):
        self._packed = {}

    def pattern(self, op, x, wq, bq, wk, bk, wv, bv, q_shape, k_shape, v_shape, q_factor, k_factor, s_factor, mask, zero):
        def heads(weight, bias, shape):
            projected = pattern.OrValue([op.Add(op.MatMul(x, weight), bias), op.MatMul(x, weight)])
            return op.Reshape(projected, shape, _allow_other_attributes=True)

        query = op.Transpose(_scaled(op, heads(wq, bq, q_shape), pattern.Var("h_factor"), "h_scaling"), perm=[0, 2, 1, 3])
        key = heads(wk, bk, k_shape)
        key_t = pattern.OrValue(
            [
                op.Transpose(key, perm=[0, 2, 3, 1]),
                op.Reshape(
                    op.Transpose(
                        op.Reshape(op.Transpose(key, perm=[0, 2, 1, 3]), pattern.ANY_VALUE, _allow_other_attributes=True),
                        perm=[0, 2, 1],
                    ),
                    pattern.ANY_VALUE,
                    _allow_other_attributes=True,
                ),
                op.Transpose(op.Transpose(key, perm=[0, 2, 1, 3]), perm=[0, 1, 3, 2]),
            ]
        )
        value = op.Transpose(heads(wv, bv, v_shape), perm=[0, 2, 1, 3])
        scores = op.MatMul(_scaled(op, query, q_factor, "q_scaling"), _scaled(op, key_t, k_factor, "k_scaling"))
        scores = _scaled(op, scores, s_factor, "s_scaling")
        probs = _masked_softmax(op, scores, mask, zero)
        context = op.MatMul(probs, value)
        context = pattern.OrValue([op.Reshape(context, pattern.ANY_VALUE, _allow_other_attributes=True), context])
        context = op.Transpose(context, perm=[0, 2, 1, 3])
        return op.Reshape(context, pattern.ANY_VALUE, _allow_other_attributes=True)

    def _split(self, q_shape, hidden: int) -> tuple[int, int] | None:
        tail = shape_tail(q_shape, 2)
        if tail is not None:  # [num_heads, head_size]; either may be -1 (inferred by Reshape)
            heads, size = tail
            if heads == -1 and size > 0 and hidden % size == 0:
                heads = hidden // size
            if size == -1 and heads > 0 and hidden % heads == 0:
                size = hidden // heads
            if heads > 0 and size > 0 and heads * size == hidden:
                return heads, size
        if self.num_heads and hidden % self.num_heads == 0:
            return self.num_heads, hidden // self.num_heads
        return None

    def check(self, context, x, wq, wk, wv, q_shape, probs, masked, mask=None, zero=None, bq=None, bk=None, bv=None, **tags):
        weights = [constant_array(w) for w in (wq, wk, wv)]
        biases = [constant_array(b) if b is not None else None for b in (bq, bk, bv)]
        if any(w is None or w.ndim != 2 for w in weights):
            return pattern.MatchResult().fail("Q/K/V projections are not constant 2-D weights")
        if len({w.shape for w in weights}) != 1:
            return pattern.MatchResult().fail("Q, K and V weights differ in shape")
        width = weights[0].shape[1]
        for given, array in zip((bq, bk, bv), biases):
            if given is not None and (array is None or array.shape != (width,)):
                return pattern.MatchResult().fail("a Q/K/V bias is not a constant vector of the projection width")
        return self._check_core(context, width, q_shape, probs, masked, mask, zero, tags)

    def _check_core(self, context, hidden, q_shape, probs, masked, mask, zero, tags):
        """Checks shared with the decoder rule: head split, softmax axis, NaN guard, scale, mask source."""
        result = pattern.MatchResult()
        split = self._split(q_shape, hidden)
        if split is None:
            return result.fail(f"cannot tell the head split of hidden size {hidden}; pass num_heads")
        axis = probs.producer().attributes.get_int("axis", -1)
        if axis not in (-1, 3):
            return result.fail(f"Softmax over axis {axis}, not the key axis")
        if zero is not None and scalar(zero) != 0.0:
            return result.fail("NaN guard does not write zeros")
        if tags.get("cleared") is not None and scalar(tags["cleared"]) != 0.0:
            return result.fail("masked probabilities are not set to zero")
        if masked == "select" and (scalar(tags.get("fill")) is None or scalar(tags["fill"]) > -1e4):
            return result.fail("masked scores are not set to a large negative number")
        if tags.get("guard") == "select" and masked != "select":
            return result.fail("probabilities are masked after Softmax but the scores are not")
        scale = 1.0
        scalings = (("q_scaling", "q_factor"), ("h_scaling", "h_factor"), ("k_scaling", "k_factor"), ("s_scaling", "s_factor"))
        for tag, factor in scalings:
            part = _scale_of(tags.get(tag, "None"), tags.get(factor))
            if part is None:
                return result.fail(f"{factor} is not a constant scalar")
            scale *= part
        self._heads, self._scale = split, scale
        self._mask_input = None
        if masked != "none":
            condition = mask if masked == "add" else tags["condition"]
            sources = source_graph_inputs(condition, context.graph_or_function)
            if len(sources) != 1:
                return result.fail(f"mask is not computed from exactly one graph input: {sorted(sources)}")
            (name,) = sources
            self._mask_input = next(v for v in context.graph_or_function.inputs if v.name == name)
            shape = self._mask_input.shape
            if shape is not None and shape.rank() != 2:
                return result.fail(f"mask input {name} is not 2-D (batch, sequence)")
            if masked == "select" and not _is_key_mask(condition, self._mask_input, context.graph_or_function):
                return result.fail("the select condition is not the mask input reshaped to (batch, 1, 1, keys)")
        return result

    def _zeros(self, op, width: int) -> ir.Value:
        key = ("zeros", width)
        if key not in self._packed:
            self._packed[key] = op.initializer(ir.tensor(np.zeros(width, np.float32), name=f"attention.zero_bias{width}"))
        return self._packed[key]

    def _pack(self, op, kind: str, parts) -> ir.Value:
        """One concatenated initializer per distinct Q/K/V triple (ALBERT shares them across layers)."""
        key = (kind, *(id(v) for v in parts))
        if key not in self._packed:
            arrays = [constant_array(v) for v in parts]
            name = f"{parts[0].name or 'attention'}.packed_qkv_{kind}{len(self._packed)}"
            self._packed[key] = op.initializer(ir.tensor(np.concatenate(arrays, axis=-1), name=name))
        return self._packed[key]

    def rewrite(self, op, x, wq, wk, wv, bq=None, bk=None, bv=None, **_):
        if bq is None or bk is None or bv is None:  # a projection without bias adds zeros
            width = constant_array(wq).shape[1]
            bq, bk, bv = (b if b is not None else self._zeros(op, width) for b in (bq, bk, bv))
        num_heads, head_size = self._heads
        attributes = {"num_heads": num_heads}
        if not math.isclose(self._scale, 1.0 / math.sqrt(head_size), rel_tol=1e-5):
            attributes["scale"] = float(self._scale)
        mask = int32_of(op, self._mask_input) if self._mask_input is not None else None
        bias = self._pack(op, "bias", (bq, bk, bv))
        if self.target == "cpu":
            q, k, v = (op.MatMul(x, w) for w in (wq, wk, wv))
            return op.MultiHeadAttention(q, k, v, bias, mask, **attributes, _domain=MS_DOMAIN)
        weight = self._pack(op, "weight", (wq, wk, wv))
        return op.Attention(x, weight, bias, mask, **attributes, _domain=MS_DOMAIN)


def _output_rank(value: ir.Value) -> int | None:
    """Rank of a Reshape's output: from shape inference, else from its constant target."""
    if value.shape is not None:
        return value.shape.rank()
    target = constant_array(value.producer().inputs[1])
    return int(target.size) if target is not None else None


def _key_transposed(op, key):
    """K^T as exports write it: one Transpose of the last two axes, or a 3-D round trip (dynamo sdpa)."""
    return pattern.OrValue(
        [
            op.Transpose(key, perm=[0, 1, 3, 2]),
            op.Reshape(
                op.Transpose(op.Reshape(key, pattern.ANY_VALUE, _allow_other_attributes=True), perm=[0, 2, 1]),
                pattern.ANY_VALUE,
                _allow_other_attributes=True,
            ),
        ]
    )


class CausalSelfAttentionWithPast(SelfAttention):
    """GPT-2 attention with past state -> ``MultiHeadAttention(unidirectional=1)`` with past/present.

    Matches one packed QKV projection split in three, the past key/value concatenated
    in front of the new ones (those concats are the ``present`` outputs), the causal +
    padding mask, and the same scale/NaN-guard variants as the encoder rule.
    ``MultiHeadAttention`` takes the per-layer past key/value tensors as they are, so
    the model's inputs and outputs do not change; it is used for every target
    (``Attention`` would need the past packed into one tensor, and
    ``GroupQueryAttention`` assumes right padding, while generation pads on the left).
    """

    def __init__(self, num_heads: int = 0, target: str = "cpu"):
        super().__init__(num_heads, target)
        self.name = "AttentionWithPast"

    def pattern(self, op, x, w_qkv, b_qkv, q_shape, k_shape, v_shape, past_key, past_value, q_factor, k_factor, s_factor, mask, zero):
        projected = op.MatMul(x, w_qkv, _outputs=["qkv_matmul"])
        q, k, v = op.Split(
            op.Add(projected, b_qkv), _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["q", "k", "v"]
        )

        def heads(value, shape):
            return op.Transpose(op.Reshape(value, shape, _allow_other_attributes=True), perm=[0, 2, 1, 3])

        present_key = op.Concat(past_key, heads(k, k_shape), _allow_other_attributes=True, _outputs=["present_key"])
        present_value = op.Concat(past_value, heads(v, v_shape), _allow_other_attributes=True, _outputs=["present_value"])
        query = _scaled(op, heads(q, q_shape), q_factor, "q_scaling")
        key_t = _scaled(op, _key_transposed(op, present_key), k_factor, "k_scaling")
        scores = _scaled(op, op.MatMul(query, key_t), s_factor, "s_scaling")
        probs = _masked_softmax(op, scores, mask, zero)
        context = op.MatMul(probs, present_value)
        context = pattern.OrValue([op.Reshape(context, pattern.ANY_VALUE, _allow_other_attributes=True), context])
        context = op.Transpose(context, perm=[0, 2, 1, 3])
        return op.Reshape(context, pattern.Var("out_shape"), _allow_other_attributes=True, _outputs=["attn_out"])

    def check(self, context, x, w_qkv, b_qkv, q_shape, q, present_key, present_value, probs, masked, mask=None, zero=None, **tags):
        weight, bias = constant_array(w_qkv), constant_array(b_qkv)
        if weight is None or weight.ndim != 2 or bias is None or bias.ndim != 1 or weight.shape[1] % 3:
            return pattern.MatchResult().fail("QKV projection is not a constant [D, 3D] weight with a bias")
        split = q.producer()
        if split.attributes.get_int("axis", 0) not in (-1, 2):
            return pattern.MatchResult().fail("QKV split is not along the hidden axis")
        sizes = constant_array(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None else None
        if sizes is not None and len(set(int(v) for v in sizes)) != 1:
            return pattern.MatchResult().fail("QKV split into unequal parts")
        for concat in (present_key.producer(), present_value.producer()):
            if concat.attributes.get_int("axis", 0) not in (-2, 2):
                return pattern.MatchResult().fail("past is not concatenated along the sequence axis")
        hidden = weight.shape[1] // 3
        self._hidden = hidden
        if _output_rank(tags["attn_out"]) not in (2, 3):
            return pattern.MatchResult().fail("cannot tell whether the attention output is 2-D or 3-D")
        # Reuse the encoder checks for heads, scale, NaN guard and mask provenance.
        return self._check_core(context, hidden, q_shape, probs, masked, mask, zero, tags)

    def rewrite(self, op, x, b_qkv, qkv_matmul, past_key, past_value, attn_out, present_key, present_value, **_):
        num_heads, head_size = self._heads
        attributes = {"num_heads": num_heads, "unidirectional": 1}
        if not math.isclose(self._scale, 1.0 / math.sqrt(head_size), rel_tol=1e-5):
            attributes["scale"] = float(self._scale)
        mask = int32_of(op, self._mask_input) if self._mask_input is not None else None
        sizes = op.Constant(value_ints=[self._hidden] * 3)
        q, k, v = op.Split(qkv_matmul, sizes, axis=-1, _outputs=3)
        output, new_present_key, new_present_value = op.MultiHeadAttention(
            q, k, v, b_qkv, mask, None, past_key, past_value, **attributes, _domain=MS_DOMAIN, _outputs=3
        )
        if _output_rank(attn_out) == 2:  # GPT-2 merges heads straight into Gemm's 2-D input
            output = op.Reshape(output, op.Constant(value_ints=[-1, self._hidden]))
        self._present_swaps += [(present_key, new_present_key), (present_value, new_present_value)]
        return output

    def setup(self):
        super().setup()
        self._present_swaps: list[tuple[ir.Value, ir.Value]] = []

    def cleanup(self):
        """Point the model's ``present`` outputs (and any reader) at the fused op's present outputs.

        The pattern has one output on purpose: multi-output patterns make the matcher try
        node combinations (seconds per model); the present values are swapped here instead.
        """
        for old, new in self._present_swaps:
            if old.is_graph_output():
                name = old.name
                old.name = f"{name}_unfused"
                new.name = name  # the model's IO keeps its names
            old.replace_all_uses_with(new, replace_graph_outputs=True)
        self._present_swaps = []


class TransposedScores(pattern.RewriteRuleClassBase):
    """Transpose(MatMul(Transpose(k, pk), Transpose(q, pq)), [0, 1, 3, 2]) -> MatMul(Transpose(q, ..), Transpose(k, ..)).

    Keras computes scores as ``einsum("aecd,abcd->acbe", key, query)``, which tf2onnx
    writes as K . Q^T transposed afterwards. (A B)^T = B^T A^T, and each operand's
    transpose folds into the one already there, giving the Q . K^T every attention form
    above starts from.
    """

    def pattern(self, op, a, b):
        product = op.MatMul(op.Transpose(a, _outputs=["a_t"]), op.Transpose(b, _outputs=["b_t"]))
        return op.Transpose(product, perm=[0, 1, 3, 2])

    def check(self, context, a_t, b_t, **_):
        perms = [list(v.producer().attributes.get_ints("perm", [])) for v in (a_t, b_t)]
        if any(sorted(p) != [0, 1, 2, 3] for p in perms):
            return pattern.MatchResult().fail("operands are not 4-D transposes with explicit perms")
        return pattern.MatchResult()

    def rewrite(self, op, a, b, a_t, b_t, **_):
        def swapped(value, transposed):
            perm = list(transposed.producer().attributes.get_ints("perm"))
            return op.Transpose(value, perm=[perm[i] for i in (0, 1, 3, 2)])

        return op.MatMul(swapped(b, b_t), swapped(a, a_t))


def attention_rules(num_heads: int = 0, target: str = "cpu") -> list[pattern.RewriteRule]:
    return [TransposedScores.rule(), SelfAttention.rule(num_heads, target), CausalSelfAttentionWithPast.rule(num_heads, target)]
