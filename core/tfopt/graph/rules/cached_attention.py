"""Attention over a key/value cache, grouped or not, with an additive mask -> ONNX opset-23 ``Attention``.

Decoder LLMs (Llama, Mistral, Qwen, Phi-3, Gemma) export each layer's attention as:
the new keys/values ([B, Nkv, S, D], keys already rotary-embedded) concatenated after the
past ones (those Concats are the ``present`` outputs), repeated to the query's head count
under grouped-query attention (``Unsqueeze`` / ``Expand`` / ``Reshape``), scores scaled
(on the scores, or by sqrt(scale) on Q and K as sdpa does), optionally soft-capped
(Gemma 2: ``cap * tanh(s / cap)``), plus the graph's own additive mask, Softmax (with
sdpa's NaN guard), times the values.

ONNX's ``Attention`` (opset 23) takes exactly that: Q, the new K and V with fewer heads,
the past, the additive mask as it is, ``scale`` and ``softcap``; it returns the context
and the presents. The mask is passed on unchanged, so whatever the graph computes
(causal, sliding window, padding on either side) is what the fused op applies; nothing
about it needs proving. ONNX Runtime's ``GroupQueryAttention`` contrib op was measured
and not chosen: on CPU it refuses batch > 1 with a past and several new tokens unless
given per-row query lengths, and ignores a left-padded mask without an extra bias input.
``MultiHeadAttention`` takes no grouped key/value heads.

One difference remains, on rows no caller reads: a query whose every key is masked (a padded
query of a left-padded batch) gets zeros from ONNX Runtime's kernel, where the exported
softmax over equal -3.4e38 scores gives the mean of the values (torch's sdpa gives zeros).
The same rule without a cache (``AdditiveMaskAttention``) takes encoders whose scores get an
additive term no other rule takes (MPNet's relative position bias, T5's bucketed bias).
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import constant_array, scalar
from .attention import key_transposed, masked_softmax, scale_of, scaled, swap_presents


CACHED_ATTENTION = "CachedAttention"  # the rule names with a cache start so ("[softcap]" variants too)


def _repeated_heads(op, value, name):
    """repeat_kv: [B, Nkv, T, D] -> Unsqueeze(2) -> Expand [B, Nkv, n, T, D] -> Reshape [B, Nkv*n, T, D]."""
    unsqueezed = op.Unsqueeze(value, pattern.ANY_VALUE, _outputs=[f"{name}_unsqueezed"])
    expanded = op.Expand(unsqueezed, pattern.ANY_VALUE, _outputs=[f"{name}_expanded"])
    return op.Reshape(expanded, pattern.ANY_VALUE, _allow_other_attributes=True, _outputs=[f"{name}_repeated"])


def _static_dims(value: ir.Value | None, rank: int) -> list | None:
    shape = value.shape if value is not None else None
    if shape is None or shape.rank() != rank:
        return None
    return list(shape.dims)


class CachedAttention(pattern.RewriteRuleClassBase):
    """Scaled dot-product attention over past + new keys/values (any head grouping) -> Attention-23.

    ``softcap``: the scores are soft-capped before the mask (Gemma 2). ``with_past=False``:
    the same attention with no cache ("AdditiveMaskAttention"): an encoder whose scores get an
    additive term the encoder rule does not take (a relative position bias, T5's bucketed bias,
    a mask it cannot prove to be key padding) -- the term is passed on as ``attn_mask`` as it is.
    It runs after the encoder and GPT-2 rules, so what they fuse is not seen here.
    """

    def __init__(self, softcap: bool = False, with_past: bool = True):
        # remove_nodes=False: the present Concats are graph outputs until cleanup swaps them;
        # what the fused op replaced is left dead and removed after the rule.
        base = CACHED_ATTENTION if with_past else "AdditiveMaskAttention"
        super().__init__(name=f"{base}[softcap]" if softcap else base, remove_nodes=False)
        self.softcap = softcap
        self.with_past = with_past
        self._present_swaps: list = []

    def pattern(self, op, query, key, value, past_key, past_value, q_factor, k_factor, s_factor, mask, zero, cap_in, cap_out):
        if self.with_past:
            present_key = op.Concat(past_key, key, _outputs=["present_key"])
            present_value = op.Concat(past_value, value, _outputs=["present_value"])
        else:
            present_key, present_value = key, value
        keys = pattern.OrValue([_repeated_heads(op, present_key, "key"), present_key], tag_var="key_form", tag_values=["grouped", "plain"])
        values = pattern.OrValue(
            [_repeated_heads(op, present_value, "value"), present_value], tag_var="value_form", tag_values=["grouped", "plain"]
        )
        key_t = key_transposed(op, keys)
        if not self.with_past:  # eager encoders transpose the token-major keys [B, S, N, D] straight to [B, N, D, S]
            key_t = pattern.OrValue(
                [key_t, op.Transpose(pattern.Var("token_keys"), perm=[0, 2, 3, 1])], tag_var="key_layout", tag_values=["heads", "tokens"]
            )
        scores = op.MatMul(scaled(op, query, q_factor, "q_scaling"), scaled(op, key_t, k_factor, "k_scaling"))
        scores = scaled(op, scores, s_factor, "s_scaling")
        if self.softcap:
            scores = op.Mul(op.Tanh(op.Div(scores, cap_in)), cap_out)
        # a second additive term before the mask (a relative position bias, MPNet): both go to attn_mask
        scores = pattern.OrValue([op.Add(scores, pattern.Var("bias")), scores], tag_var="biased", tag_values=["bias", "none"])
        probs = masked_softmax(op, scores, mask, zero)
        return op.MatMul(probs, values, _outputs=["attended"])

    def check(self, context, query, value, probs, masked, guard, value_form, biased, key=None, key_form=None, present_key=None, present_value=None, **tags):
        if tags.get("key_layout") == "tokens":
            key_form = "plain"  # token-major keys are never repeated
        if masked not in ("add", "none") or guard not in ("nan", "none") or key_form != value_form:
            return False
        if biased == "bias" and (tags.get("bias") is None or tags["bias"].const_value is not None and tags["bias"].const_value.size == 1):
            return False  # a scalar added to every score is no bias (softmax ignores it), and not an attn_mask
        if guard == "nan" and scalar(tags.get("zero")) != 0.0:
            return False
        if probs.producer().attributes.get_int("axis", -1) not in (-1, 3):
            return False
        for concat in (present_key.producer(), present_value.producer()) if self.with_past else ():
            if concat.attributes.get_int("axis", 0) not in (-2, 2):
                return False
        q_dims, k_dims, v_dims = (_static_dims(v, 4) for v in (query, key, value))
        if tags.get("key_layout") == "tokens":
            token_dims = _static_dims(tags.get("token_keys"), 4)
            k_dims = None if token_dims is None else [token_dims[0], token_dims[2], token_dims[1], token_dims[3]]
        if q_dims is None or k_dims is None or v_dims is None:
            return False
        q_heads, kv_heads, head_size = q_dims[1], k_dims[1], q_dims[3]
        if not all(isinstance(d, int) for d in (q_heads, kv_heads, head_size, k_dims[3])) or v_dims[1] != kv_heads:
            return False
        if q_heads % kv_heads or k_dims[3] != head_size:
            return False
        if key_form == "grouped" and not all(self._repeats(tags, name, kv_heads, q_heads) for name in ("key", "value")):
            return False
        if key_form == "plain" and q_heads != kv_heads:
            return False
        factors = [scale_of(tags[f"{side}_scaling"], tags.get(f"{side}_factor")) for side in ("q", "k", "s")]
        if None in factors:
            return False
        self._scale = math.prod(factors)
        if self.softcap:
            cap_in, cap_out = scalar(tags.get("cap_in")), scalar(tags.get("cap_out"))
            if cap_in is None or cap_in <= 0 or cap_in != cap_out:
                return False
            self._softcap = cap_in
        return True

    @staticmethod
    def _repeats(tags, name: str, kv_heads: int, q_heads: int) -> bool:
        """The repeat puts each key/value head ``q_heads / kv_heads`` times in a row (head h reads h // n)."""
        unsqueezed = tags[f"{name}_unsqueezed"].producer()
        axes = constant_array(unsqueezed.inputs[1]) if len(unsqueezed.inputs) > 1 else None
        if axes is None or axes.size != 1 or int(axes.reshape(())) != 2:
            return False
        expanded = _static_dims(tags[f"{name}_expanded"], 5)
        repeated = _static_dims(tags[f"{name}_repeated"], 4)
        if expanded is None or repeated is None:
            return False
        return expanded[1] == kv_heads and expanded[2] == q_heads // kv_heads and repeated[1] == q_heads

    def rewrite(self, op, query, key, value, masked, biased, past_key=None, past_value=None, present_key=None, present_value=None,
                mask=None, bias=None, **tags):
        attributes = {"scale": float(self._scale)}
        if self.softcap:
            attributes["softcap"] = float(self._softcap)
        terms = [_per_query_row(op, term, query) for term, used in ((bias, biased == "bias"), (mask, masked == "add")) if used]
        # (s + bias) + mask becomes s + (bias + mask): one rounding of the sum moves, within the scores' own noise
        additive = op.Add(*terms) if len(terms) == 2 else (terms[0] if terms else None)
        if not self.with_past:
            if key is None:  # the token-major keys: Attention takes them as heads [B, N, S, D]
                key = op.Transpose(tags["token_keys"], perm=[0, 2, 1, 3])
            return op.Attention(query, key, value, additive, **attributes)
        output, new_key, new_value = op.Attention(query, key, value, additive, past_key, past_value, **attributes, _outputs=3)
        self._present_swaps += [(present_key, new_key, past_key.dtype), (present_value, new_value, past_value.dtype)]
        return output

    def setup(self):
        super().setup()
        self._present_swaps = []

    def cleanup(self):
        swap_presents(self._present_swaps)
        self._present_swaps = []


def _per_query_row(op, term: ir.Value, query: ir.Value) -> ir.Value:
    """``term`` broadcast to one row per query, as ONNX Runtime's Attention takes ``attn_mask``.

    Its kernel does not broadcast the mask's query axis (a key-padding mask [B, 1, 1, T] is
    refused: "inconsistent q_sequence_length"); where the graph does not show that axis is the
    query length, the term is expanded to it.
    """
    rows = term.shape[-2] if term.shape is not None and term.shape.rank() >= 2 else None
    queries = query.shape[2] if query.shape is not None and query.shape.rank() == 4 else None
    if isinstance(rows, int) and isinstance(queries, int) and rows == queries:
        return term
    if isinstance(rows, ir.SymbolicDim) and isinstance(queries, ir.SymbolicDim) and rows.value and rows.value == queries.value:
        return term
    shape = op.Shape(term)
    target = op.Concat(op.Slice(shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[-2])), op.Shape(query, start=2, end=3),
                       op.Shape(term, start=-1), axis=0)
    return op.Expand(term, target)


def cached_attention_rules() -> list[pattern.RewriteRule]:
    """With a cache first (their Concats would otherwise be taken for keys without one)."""
    return [CachedAttention.rule(softcap=True), CachedAttention.rule()]


def additive_mask_attention_rules() -> list[pattern.RewriteRule]:
    return [CachedAttention.rule(softcap=True, with_past=False), CachedAttention.rule(with_past=False)]
