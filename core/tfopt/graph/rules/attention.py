"""Self-attention of encoder models -> ORT's ``Attention`` contrib op (packed QKV GEMM).

One rule covers what today's exporters write for BERT-family self-attention:

- Q, K, V: ``Transpose(Reshape(MatMul(x, W) + b), [0, 2, 1, 3])``;
- K^T three ways: ``Transpose(k, [0, 2, 3, 1])`` (eager, legacy sdpa), a 3-D
  reshape/transpose/reshape round trip (dynamo sdpa), or two Transposes;
- the 1/sqrt(head_size) scale on Q and K separately (sdpa), or on the scores
  (eager), as Mul or Div;
- the mask as an additive tensor (``Add``), absent, or both;
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

from ..values import MS_DOMAIN, constant_array, int32_of, scalar, shape_tail, source_graph_inputs

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
            return op.Reshape(op.Add(op.MatMul(x, weight), bias), shape, _allow_other_attributes=True)

        query = op.Transpose(heads(wq, bq, q_shape), perm=[0, 2, 1, 3])
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
        scores = pattern.OrValue([op.Add(scores, mask), scores], tag_var="masked", tag_values=[True, False])
        probs = op.Softmax(scores, _outputs=["probs"])
        probs = pattern.OrValue([op.Where(op.IsNaN(probs), zero, probs), probs])
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

    def check(self, context, x, wq, bq, wk, bk, wv, bv, q_shape, probs, masked, mask=None, zero=None, **tags):
        weights = [constant_array(w) for w in (wq, wk, wv)]
        biases = [constant_array(b) for b in (bq, bk, bv)]
        if any(w is None or w.ndim != 2 for w in weights) or any(b is None or b.ndim != 1 for b in biases):
            return pattern.MatchResult().fail("Q/K/V projections are not constant 2-D weights with 1-D biases")
        if len({w.shape for w in weights}) != 1:
            return pattern.MatchResult().fail("Q, K and V weights differ in shape")
        return self._check_core(context, weights[0].shape[1], q_shape, probs, masked, mask, zero, tags)

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
        scale = 1.0
        for tag, factor in (("q_scaling", "q_factor"), ("k_scaling", "k_factor"), ("s_scaling", "s_factor")):
            part = _scale_of(tags.get(tag, "None"), tags.get(factor))
            if part is None:
                return result.fail(f"{factor} is not a constant scalar")
            scale *= part
        self._heads, self._scale = split, scale
        self._mask_input = None
        if masked:
            sources = source_graph_inputs(mask, context.graph_or_function)
            if len(sources) != 1:
                return result.fail(f"mask is not computed from exactly one graph input: {sorted(sources)}")
            (name,) = sources
            self._mask_input = next(v for v in context.graph_or_function.inputs if v.name == name)
            shape = self._mask_input.shape
            if shape is not None and shape.rank() != 2:
                return result.fail(f"mask input {name} is not 2-D (batch, sequence)")
        return result

    def _pack(self, op, kind: str, parts) -> ir.Value:
        """One concatenated initializer per distinct Q/K/V triple (ALBERT shares them across layers)."""
        key = (kind, *(id(v) for v in parts))
        if key not in self._packed:
            arrays = [constant_array(v) for v in parts]
            name = f"{parts[0].name or 'attention'}.packed_qkv_{kind}{len(self._packed)}"
            self._packed[key] = op.initializer(ir.tensor(np.concatenate(arrays, axis=-1), name=name))
        return self._packed[key]

    def rewrite(self, op, x, wq, bq, wk, bk, wv, bv, **_):
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
        scores = pattern.OrValue([op.Add(scores, mask), scores], tag_var="masked", tag_values=[True, False])
        probs = op.Softmax(scores, _outputs=["probs"])
        probs = pattern.OrValue([op.Where(op.IsNaN(probs), zero, probs), probs])
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


def attention_rules(num_heads: int = 0, target: str = "cpu") -> list[pattern.RewriteRule]:
    return [SelfAttention.rule(num_heads, target), CausalSelfAttentionWithPast.rule(num_heads, target)]
