"""Attention with its heads folded into the batch axis, rewritten exactly into the 4-D form the attention rules match.

DeBERTa (v2/v3, both torch exporters) computes attention with 3-D batched MatMuls: Q, K and V
are split into heads [B, N, S, D] and then folded to [B*N, S, D]; the scores come back to
[B, N, S, T] for the mask and the Softmax, and the probabilities are folded again for the
product with V::

    s = Reshape(MatMul(Reshape(q, [-1, S, D]), Transpose(Reshape(k, [-1, T, D]), [0, 2, 1]) / c [+ bias3]), [-1, N, S, T])
    p = Softmax(Where(Not(keep), fill, s))
    o = Reshape(MatMul(Reshape(p, [-1, S, T]), Reshape(v, [-1, T, Dv])), [-1, N, S, Dv])

Folding the first two axes of a [B, N, S, D] tensor and splitting them again is the identity
on the data, so the batched product over B*N pairs is the 4-D product over (B, N):

- :class:`FoldedScores`: ``Reshape(MatMul(fold(q), fold(k)^T) [+ bias3], [-1, N, S, T])`` ->
  ``MatMul(q, k^T) [+ Reshape(bias3)]``, scale factors kept where they were (a scale computed
  from a static shape, ``sqrt(k.size(-1))`` in legacy exports, becomes its constant);
- :class:`FoldedContext`: ``Reshape(MatMul(fold(p), fold(v)), [-1, N, S, Dv])`` -> ``MatMul(p, v)``;
- :class:`SelectedScores`: ``Softmax(Where(drop, fill, s))`` (or ``Where(keep, s, fill)``) ->
  ``Softmax(s + Where(drop, fill, 0))``: the select written as the additive mask the attention
  rules take. For a fill of -1e4 or less the two give the same probabilities in every row that
  keeps a key (see ``decoder_forms._HUGE_NEGATIVE``); float32's min (torch's masked_fill) even
  gives ``s + fill == fill``. A row with no kept key (a padded query) is read by nothing.

Each rewrite is proved from the shapes shape inference and :mod:`shape_facts` give (equal
dims by number or by the one symbol the graph proves them to share), never from names of
the model's parts; what follows is fused by the shared rules (``AdditiveMaskAttention``
keeps the graph's mask and DeBERTa's disentangled c2p + p2c terms as ``attn_mask``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import constant_array, scalar
from .attention import scaled
from .decoder_forms import _HUGE_NEGATIVE, _reaches, static_value
from .reshapes import rank_of, same_dim, target_entries


def _dims(value: ir.Value | None, rank: int) -> list | None:
    shape = value.shape if value is not None else None
    if shape is None or shape.rank() != rank:
        return None
    return list(shape.dims)


def _folds(folded: ir.Value, heads: ir.Value, trailing: tuple[int, int] = (2, 3)) -> bool:
    """``folded`` [X, a, b] is ``heads`` [B, N, ., .] with its first two axes merged: its last two
    dims are ``heads``' axes ``trailing`` (in that order), so X = B*N in row-major order."""
    small, big = _dims(folded, 3), _dims(heads, 4)
    if small is None or big is None:
        return False
    return same_dim(small[1], big[trailing[0]]) and same_dim(small[2], big[trailing[1]])


def _typed(value: ir.Value, shape, dtype) -> None:
    """Give a value a rewrite created the shape the rules after it read (no inference runs between rules)."""
    if shape is not None and dtype is not None:
        value.shape, value.dtype = ir.Shape(shape), dtype


def _constant_factor(factor: ir.Value | None) -> np.ndarray | None:
    """A scale factor as one constant number: a constant, or a scalar computed from static shapes."""
    array = constant_array(factor)
    if array is None:
        array = static_value(factor)
    if array is None or array.size != 1 or array.dtype.kind != "f":
        return None
    return array


def _scale_factors(tags: dict) -> dict[str, np.ndarray] | str:
    """The constant factor of each scale the match found on Q, Kᵀ or the scores, or the side whose is not one."""
    factors = {}
    for side in ("q", "k", "s"):
        if tags[f"{side}_scaling"] == "None":
            continue
        factor = _constant_factor(tags.get(f"{side}_factor"))
        if factor is None:
            return side
        factors[side] = factor
    return factors


def _rescaled(op, value, side: str, factors: dict, tags: dict):
    """``value`` scaled as the match scaled that side (Mul or Div by its constant), or as it is."""
    if side not in factors:
        return value
    constant = op.Constant(value=ir.tensor(factors[side].reshape(()), name=f"{side}_scale"))
    return getattr(op, tags[f"{side}_scaling"])(value, constant)


class FoldedScores(pattern.RewriteRuleClassBase):
    """Q·Kᵀ over heads folded into the batch (3-D MatMul), unfolded to [B, N, S, T] -> the 4-D Q·Kᵀ.

    Kᵀ is ``Transpose(fold(k), [0, 2, 1])`` or ``fold(Transpose(k, [0, 1, 3, 2]))``; a scale may
    sit on the folded Q, Kᵀ or scores (Mul or Div by one number); a term added to the folded
    scores (DeBERTa-v3's c2p + p2c) is unfolded with them.
    """

    def __init__(self):
        # remove_nodes=False: legacy exports read Shape() of the folded tensors to build the
        # Reshape targets; those reads die with the pattern (dead nodes are removed after the step).
        super().__init__(name="FoldedScores", remove_nodes=False)

    def pattern(self, op, query, key, q_factor, k_factor, s_factor, bias):
        folded_query = op.Reshape(query, pattern.ANY_VALUE, _allow_other_attributes=True, _outputs=["folded_query"])
        key_t = pattern.OrValue(
            [
                op.Transpose(op.Reshape(key, pattern.ANY_VALUE, _allow_other_attributes=True), perm=[0, 2, 1], _outputs=["folded_key_t"]),
                op.Reshape(op.Transpose(key, perm=[0, 1, 3, 2]), pattern.ANY_VALUE, _allow_other_attributes=True, _outputs=["folded_key_t"]),
            ],
            tag_var="key_fold",
            tag_values=["fold_then_transpose", "transpose_then_fold"],
        )
        scores = op.MatMul(scaled(op, folded_query, q_factor, "q_scaling"), scaled(op, key_t, k_factor, "k_scaling"))
        scores = scaled(op, scores, s_factor, "s_scaling")
        scores = pattern.OrValue(
            [op.Add(scores, bias), op.Add(bias, scores), scores], tag_var="biased", tag_values=["right", "left", "none"]
        )
        return op.Reshape(scores, pattern.ANY_VALUE, _allow_other_attributes=True, _outputs=["scores"])

    def check(self, context, query, key, folded_query, folded_key_t, scores, key_fold, biased, bias=None, **tags):
        result = pattern.MatchResult()
        q, k, out = _dims(query, 4), _dims(key, 4), _dims(scores, 4)
        if q is None or k is None or out is None:
            return result.fail("Q, K or the unfolded scores are not 4-D tensors of known rank")
        if not _folds(folded_query, query):
            return result.fail("the folded Q is not Q [B, N, S, D] with (B, N) merged")
        if key_fold == "fold_then_transpose":
            folded_key = folded_key_t.producer().inputs[0]
            if not _folds(folded_key, key) or folded_key.producer().op_type != "Reshape":
                return result.fail("the folded K is not K [B, N, T, D] with (B, N) merged")
        elif not _folds(folded_key_t, key, trailing=(3, 2)):
            return result.fail("the folded Kᵀ is not Kᵀ [B, N, D, T] with (B, N) merged")
        if not (same_dim(q[0], k[0]) and same_dim(q[1], k[1]) and same_dim(q[3], k[3])):
            return result.fail("Q and K do not provably share batch, heads and head size")
        if not (same_dim(out[1], q[1]) and same_dim(out[2], q[2]) and same_dim(out[3], k[2])):
            return result.fail("the scores are not unfolded to [B, N, S, T] with Q's heads")
        self._scores_shape = ir.Shape([q[0], q[1], q[2], k[2]])  # what the new values are (the rules after read it)
        self._factors = _scale_factors(tags)
        if isinstance(self._factors, str):
            return result.fail(f"the {self._factors} scale is not one constant number")
        if biased != "none":
            if bias is None or bias.shape is None or bias.shape.rank() > 3:
                return result.fail("the added term is not a tensor of known rank 3 or less")
            folded = _dims(folded_query, 3)
            dims = _dims(bias, 3)
            self._bias_fits = dims is not None and same_dim(dims[0], folded[0]) and same_dim(dims[1], q[2]) and same_dim(dims[2], k[2])
        return result

    def rewrite(self, op, query, key, biased, bias=None, **tags):
        def scale(value, side):
            return _rescaled(op, value, side, self._factors, tags)

        product = op.MatMul(scale(query, "q"), scale(op.Transpose(key, perm=[0, 1, 3, 2]), "k"))
        product = scale(product, "s")
        _typed(product, self._scores_shape, query.dtype)
        if biased == "none":
            return product
        if not self._bias_fits:
            # a term that may broadcast: expanded to the folded scores' shape [B*N, S, T] first, as the Add did
            # (sizes read off the 4-D Q and K: a read of the folded tensors would keep them computed)
            folded_batch = op.Mul(op.Shape(query, start=0, end=1), op.Shape(query, start=1, end=2))
            bias = op.Expand(bias, op.Concat(folded_batch, op.Shape(query, start=2, end=3), op.Shape(key, start=2, end=3), axis=0))
        # [B*N, S, T] -> [B, N, S, T], sizes read off Q and K: the graph's own target (legacy exports read it
        # off the folded sum) or Shape(product) would keep a product computed that the fused op replaces
        unfolded = op.Reshape(bias, op.Concat(op.Shape(query, start=0, end=3), op.Shape(key, start=2, end=3), axis=0))
        summed = op.Add(product, unfolded) if biased == "right" else op.Add(unfolded, product)
        for new_value in (unfolded, summed):
            _typed(new_value, self._scores_shape, query.dtype)
        return summed


class FoldedContext(pattern.RewriteRuleClassBase):
    """P·V over heads folded into the batch, unfolded to [B, N, S, Dv] -> the 4-D P·V."""

    def __init__(self):
        super().__init__(name="FoldedContext", remove_nodes=False)  # Shape() reads of the folded tensors, as above

    def pattern(self, op, probs, value):
        folded_probs = op.Reshape(probs, pattern.ANY_VALUE, _allow_other_attributes=True, _outputs=["folded_probs"])
        folded_value = op.Reshape(value, pattern.ANY_VALUE, _allow_other_attributes=True, _outputs=["folded_value"])
        product = op.MatMul(folded_probs, folded_value)
        return op.Reshape(product, pattern.ANY_VALUE, _allow_other_attributes=True, _outputs=["unfolded"])

    def check(self, context, probs, value, folded_probs, folded_value, **tags):
        result = pattern.MatchResult()
        p, v, out = _dims(probs, 4), _dims(value, 4), _dims(tags["unfolded"], 4)
        if p is None or v is None or out is None:
            return result.fail("P, V or the unfolded context are not 4-D tensors of known rank")
        if not _folds(folded_probs, probs) or not _folds(folded_value, value):
            return result.fail("the folded P or V is not its 4-D tensor with (B, N) merged")
        if not (same_dim(p[0], v[0]) and same_dim(p[1], v[1]) and same_dim(p[3], v[2])):
            return result.fail("P and V do not provably share batch, heads and keys")
        if not (same_dim(out[1], p[1]) and same_dim(out[2], p[2]) and same_dim(out[3], v[3])):
            return result.fail("the context is not unfolded to [B, N, S, Dv] with P's heads")
        return result

    def rewrite(self, op, probs, value, unfolded, **_):
        product = op.MatMul(probs, value)
        _typed(product, unfolded.shape, unfolded.dtype)
        return product


_PASS_THROUGH = ("Unsqueeze", "Squeeze", "Cast", "Identity")


def _size_product(value: ir.Value | None, depth: int = 0) -> tuple[int, list] | None:
    """A scalar (or 1-element) size as (number, [dims read off shapes]) whose product it is, or None.

    Constants and shape reads are what :func:`reshapes.target_entries` reads; this adds the
    products of symbols it leaves unread (``batch * heads``).
    """
    if value is None or depth > 12:
        return None
    entries = target_entries(value)
    if entries is not None:
        if len(entries) != 1:
            return None
        entry = entries[0]
        if isinstance(entry, int):
            return entry, []
        dims = _dims(entry.value, rank_of(entry.value))
        dim = dims[entry.axis] if dims is not None else None
        return None if dim is None else (dim, []) if isinstance(dim, int) else (1, [dim])
    node = value.producer()
    if node is None or node.domain != "":
        return None
    if node.op_type in _PASS_THROUGH:
        return _size_product(node.inputs[0], depth + 1)
    if node.op_type == "Mul" and len(node.inputs) == 2:
        sides = [_size_product(side, depth + 1) for side in node.inputs]
        if any(side is None for side in sides):
            return None
        return sides[0][0] * sides[1][0], sides[0][1] + sides[1][1]
    return None


def _fold_is_exact(target: ir.Value | None, batch, heads: int, head_size: int) -> bool:
    """The fold's Reshape target is [a number, batch * heads, head_size], each entry read exactly.

    A [L, B, H*d] tensor has L*B*H*d elements and the fold asks for n*(B*H)*d, so it runs only
    where L == n: TorchScript bakes the traced length in that way, and unfolding the heads there
    changes nothing. (A target computed otherwise, say [1, L*B*H, d], runs at every L and means
    another attention: refused.)
    """
    node = target.producer() if target is not None else None
    if node is None or node.op_type != "Concat" or node.domain != "" or len(node.inputs) != 3:
        return False
    parts = [_size_product(part) for part in node.inputs]
    if any(part is None or len(part[1]) > 1 for part in parts):
        return False
    (length, free), (number, dims), (size, rest) = parts
    if free or rest or size != head_size or length <= 0:
        return False
    if isinstance(batch, int):
        return not dims and number == batch * heads
    return number == heads and len(dims) == 1 and same_dim(dims[0], batch)


class SequenceFirstFolded(pattern.RewriteRuleClassBase):
    """torch's ``nn.MultiheadAttention`` math path (``need_weights=True``, its default): sequence-first,
    heads folded into the batch, 3-D throughout -> the batch-first 4-D form the attention rules fuse.

    ::

        q = Transpose(Reshape(q_seq [T, B, D], [T, B*H, d]), [1, 0, 2])       # [B*H, T, d]
        kt = Transpose(Reshape(k_seq [S, B, D], [S, B*H, d]), [1, 2, 0])      # [B*H, d, S]
        v = Transpose(Reshape(v_seq [S, B, Dv], [S, B*H, dv]), [1, 0, 2])
        out = Transpose(MatMul(Softmax(MatMul(q·c, kt·c')·c''), v), [1, 0, 2])  # [T, B*H, dv]

    A row-major [T, B, D] viewed as [T, B*H, d] is [T, B, H, d] with (B, H) merged, so the product
    over the B*H folded pairs is the product over (B, H): Q becomes
    ``Transpose(Reshape(Transpose(q_seq, [1, 0, 2]), [0, 0, H, d]), [0, 2, 1, 3])`` ([B, H, T, d]),
    K and V alike, and the context goes back through ``[B, T, Dv]`` (the shape the rules' output
    form has) to ``[T, B*H, dv]``. Proved from shapes: Q's, K's and V's sequence-first batch the
    same dim, each fold keeping the sequence dim (or a number there in a target of exactly
    [n, batch * heads, d], :func:`_fold_is_exact`) and a static head size dividing the static width.

    ``masked``: an additive mask [B*H or 1, T or 1, S] is added to the folded scores (the module's
    ``key_padding_mask`` or ``attn_mask``: ``baddbmm(mask, q, kᵀ)``). It is unfolded as the scores
    are (index b*H + h -> (b, h)), so each score keeps its own term whatever order the mask was folded in.
    """

    def __init__(self, masked: bool = False):
        # remove_nodes=False: Shape() reads of the folded tensors
        super().__init__(name="SequenceFirstFolded[masked]" if masked else "SequenceFirstFolded", remove_nodes=False)
        self.masked = masked

    def pattern(self, op, q_seq, k_seq, v_seq, q_factor, k_factor, s_factor, mask):
        query = op.Transpose(op.Reshape(q_seq, pattern.ANY_VALUE, _allow_other_attributes=True, _outputs=["q_folded"]), perm=[1, 0, 2])
        key_t = op.Transpose(op.Reshape(k_seq, pattern.ANY_VALUE, _allow_other_attributes=True, _outputs=["k_folded"]), perm=[1, 2, 0])
        value = op.Transpose(op.Reshape(v_seq, pattern.ANY_VALUE, _allow_other_attributes=True, _outputs=["v_folded"]), perm=[1, 0, 2])
        scores = scaled(op, op.MatMul(scaled(op, query, q_factor, "q_scaling"), scaled(op, key_t, k_factor, "k_scaling")), s_factor, "s_scaling")
        if self.masked:
            scores = pattern.OrValue([op.Add(scores, mask), op.Add(mask, scores)], tag_var="mask_side", tag_values=["right", "left"])
        probs = op.Softmax(scores, _allow_other_attributes=True, _outputs=["probs"])
        return op.Transpose(op.MatMul(probs, value), perm=[1, 0, 2], _outputs=["attended"])

    def _mask_fails(self, mask: ir.Value, dims: dict) -> str | None:
        """Why ``mask`` is not [B*H or 1, T or 1, S] over the folded scores, or None."""
        shape = _dims(mask, 3)
        if shape is None:
            return "the mask is not a 3-D tensor of known rank"
        folded_batch = dims["qf"][1]
        queries, keys = (dims["q"][0], dims["qf"][0]), (dims["k"][0], dims["kf"][0])  # a fold's length is the run's (check)
        if not (shape[1] == 1 or any(same_dim(shape[1], q) for q in queries)) or not any(same_dim(shape[2], k) for k in keys):
            return "the mask is not [., queries or 1, keys]"
        if not (shape[0] == 1 or same_dim(shape[0], folded_batch) or self._mask_source is not None):
            return "the mask's first axis is neither 1, nor the folded batch, nor a fold of [batch, heads]"
        return None

    def _mask_heads(self, mask: ir.Value, dims: dict) -> ir.Value | None:
        """The 4-D [B, H, T|1, S] mask ``mask`` folds (Reshape merging its first two axes), or None."""
        node = mask.producer()
        source = node.inputs[0] if node is not None and node.op_type == "Reshape" and node.domain == "" else None
        full, folded = _dims(source, 4), _dims(mask, 3)
        if full is None or folded is None:
            return None
        if full[1] != self._heads or not same_dim(full[0], dims["q"][1]):
            return None
        return source if same_dim(full[2], folded[1]) and same_dim(full[3], folded[2]) else None

    def check(self, context, q_seq, k_seq, v_seq, q_folded, k_folded, v_folded, probs, mask=None, **tags):
        result = pattern.MatchResult()
        dims = {name: _dims(value, 3) for name, value in
                (("q", q_seq), ("k", k_seq), ("v", v_seq), ("qf", q_folded), ("kf", k_folded), ("vf", v_folded))}
        if any(d is None for d in dims.values()):
            return result.fail("Q, K, V or their folds are not 3-D tensors of known rank")
        if probs.producer().attributes.get_int("axis", -1) not in (-1, 2):
            return result.fail("the Softmax is not over the keys")
        if not (same_dim(dims["q"][1], dims["k"][1]) and same_dim(dims["k"][1], dims["v"][1]) and same_dim(dims["k"][0], dims["v"][0])):
            return result.fail("Q, K and V do not provably share the batch (and K, V the keys)")
        heads = set()
        folds = {"q": q_folded, "k": k_folded, "v": v_folded}
        for side in ("q", "k", "v"):
            seq, folded = dims[side], dims[side + "f"]
            width, head_size = seq[2], folded[2]
            if not isinstance(width, int) or not isinstance(head_size, int) or width % head_size:
                return result.fail(f"the {side.upper()} fold does not split a static width into static heads")
            baked = isinstance(folded[0], int) and _fold_is_exact(folds[side].producer().inputs[1], seq[1], width // head_size, head_size)
            if not (same_dim(seq[0], folded[0]) or baked):
                return result.fail(f"the {side.upper()} fold does not keep the sequence (nor bake its length into [n, batch * heads, d])")
            heads.add(width // head_size)
        if len(heads) != 1 or dims["q"][2] != dims["k"][2]:
            return result.fail("Q, K and V do not split into the same number of heads of one Q/K head size")
        self._heads = heads.pop()
        if self.masked:
            self._mask_source = self._mask_heads(mask, dims)
            if why := self._mask_fails(mask, dims):
                return result.fail(why)
        self._factors = _scale_factors(tags)
        if isinstance(self._factors, str):
            return result.fail(f"the {self._factors} scale is not one constant number")
        return result

    def rewrite(self, op, q_seq, k_seq, v_seq, q_folded, v_folded, probs, attended, mask=None, **tags):
        dtype, heads = q_seq.dtype, self._heads

        def typed(value, dims):
            _typed(value, dims, dtype)
            return value

        def heads_first(value, folded):  # [L, B, D] -> [B, H, L, d], each new value given its shape
            length, batch, width = _dims(value, 3)
            head_size = folded.shape[2]
            split = op.Constant(value=ir.tensor(np.array([0, 0, heads, head_size], dtype=np.int64), name="split_heads"))
            batch_first = typed(op.Transpose(value, perm=[1, 0, 2]), [batch, length, width])
            return typed(op.Transpose(typed(op.Reshape(batch_first, split), [batch, length, heads, head_size]), perm=[0, 2, 1, 3]),
                         [batch, heads, length, head_size])

        def scale(value, side):
            scaled_value = _rescaled(op, value, side, self._factors, tags)
            return scaled_value if scaled_value is value else typed(scaled_value, list(value.shape.dims))

        query, key, value = heads_first(q_seq, q_folded), heads_first(k_seq, tags["k_folded"]), heads_first(v_seq, v_folded)
        batch, _, length, head_size = _dims(query, 4)
        keys, value_size = _dims(key, 4)[2], v_folded.shape[2]
        key_t = typed(op.Transpose(key, perm=[0, 1, 3, 2]), [batch, heads, head_size, keys])
        scores = scale(typed(op.MatMul(scale(query, "q"), scale(key_t, "k")), [batch, heads, length, keys]), "s")
        if self.masked:
            unfolded = self._mask_source or self._unfolded_mask(op, mask, heads, batch, typed)
            scores = typed(op.Add(scores, unfolded), [batch, heads, length, keys])
        weights = typed(op.Softmax(scores, axis=-1), [batch, heads, length, keys])
        context = typed(op.MatMul(weights, value), [batch, heads, length, value_size])
        width = op.Constant(value=ir.tensor(np.array([0, 0, heads * value_size], dtype=np.int64), name="merge_heads"))
        spread = typed(op.Transpose(context, perm=[0, 2, 1, 3]), [batch, length, heads, value_size])
        merged = typed(op.Reshape(spread, width), [batch, length, heads * value_size])  # [B, T, Dv]: the rules' output form
        folded = op.Constant(value=ir.tensor(np.array([0, -1, value_size], dtype=np.int64), name="fold_heads"))
        sequence_first = typed(op.Transpose(merged, perm=[1, 0, 2]), [length, batch, heads * value_size])
        return typed(op.Reshape(sequence_first, folded), list(attended.shape.dims))  # [T, B*H, dv], as before

    @staticmethod
    def _unfolded_mask(op, mask: ir.Value, heads: int, batch, typed) -> ir.Value:
        """[B*H, T|1, S] -> [B, H, T|1, S] (row-major, as the scores unfold); [1, T|1, S] -> [1, 1, T|1, S]."""
        folded, rows, keys = _dims(mask, 3)
        if folded == 1:
            axis = op.Constant(value=ir.tensor(np.array([0], dtype=np.int64), name="mask_axis"))
            return typed(op.Unsqueeze(mask, axis), [1, 1, rows, keys])
        leading = op.Constant(value=ir.tensor(np.array([-1, heads], dtype=np.int64), name="unfold_mask"))
        start = op.Constant(value=ir.tensor(np.array([1], dtype=np.int64), name="mask_rows_at"))
        end = op.Constant(value=ir.tensor(np.array([3], dtype=np.int64), name="mask_rows_end"))
        target = op.Concat(leading, op.Slice(op.Shape(mask), start, end), axis=0)  # Slice: Shape's start needs opset 15
        return typed(op.Reshape(mask, target), [batch, heads, rows, keys])


_SCORE_PRODUCERS = ("MatMul", "Div", "Mul", "Add")


def _from_scores_product(scores: ir.Value, depth: int = 4) -> bool:
    """``scores`` is a MatMul, maybe scaled or with terms added (Div/Mul/Add on one operand at a time)."""
    node = scores.producer()
    if node is None or node.domain != "" or node.op_type not in _SCORE_PRODUCERS or depth == 0:
        return False
    if node.op_type == "MatMul":
        return True
    return any(value is not None and _from_scores_product(value, depth - 1) for value in node.inputs)


class SelectedScores(pattern.RewriteRuleClassBase):
    """Softmax(Where(drop, fill, s)) [or Where(keep, s, fill)] -> Softmax(s + Where(drop, fill, 0)) [Where(keep, 0, fill)].

    ``fill_first``: the Where writes the fill where its condition holds (torch's ``masked_fill``
    of DeBERTa: ``Where(Not(keep), min, s)``); else it keeps the scores there.
    """

    def __init__(self, fill_first: bool):
        super().__init__(name="SelectedScores[fill first]" if fill_first else "SelectedScores")
        self.fill_first = fill_first

    def pattern(self, op, condition, fill, scores):
        selected = op.Where(condition, fill, scores, _outputs=["selected"]) if self.fill_first else op.Where(condition, scores, fill, _outputs=["selected"])
        return op.Softmax(selected, _allow_other_attributes=True, _outputs=["probs"])

    def check(self, context, condition, fill, scores, probs, **_):
        result = pattern.MatchResult()
        value = scalar(fill)
        if value is None or not value <= _HUGE_NEGATIVE:
            return result.fail("Where does not write a huge negative number (not exact as an additive mask)")
        if condition.dtype is not None and condition.dtype != ir.DataType.BOOL:
            return result.fail("Where condition is not boolean")
        if _dims(scores, 4) is None or probs.producer().attributes.get_int("axis", -1) not in (-1, 3):
            return result.fail("not a Softmax over the keys of 4-D attention scores")
        if not _from_scores_product(scores):
            return result.fail("Where does not select from attention scores (a MatMul, maybe scaled or biased)")
        if _reaches(condition, scores):
            return result.fail("the mask depends on the scores")
        return result

    def rewrite(self, op, condition, fill, scores, probs, selected, **_):
        zero = op.Constant(value=ir.tensor(np.zeros((), dtype=constant_array(fill).dtype), name="select_zero"))
        mask = op.Where(condition, fill, zero) if self.fill_first else op.Where(condition, zero, fill)
        if constant_array(fill).size == 1:  # both branches scalars: the condition's shape
            _typed(mask, condition.shape, selected.dtype)
        axis = probs.producer().attributes.get("axis")
        attributes = {"axis": axis.as_int()} if axis is not None else {}
        return op.Softmax(op.Add(scores, mask), **attributes)


def head_folded_rules() -> list[pattern.RewriteRule]:
    """Unfold first (the select's check reads the scores' product), then the select as an additive mask."""
    return [
        SequenceFirstFolded.rule(), SequenceFirstFolded.rule(masked=True), FoldedScores.rule(), FoldedContext.rule(),
        SelectedScores.rule(fill_first=True), SelectedScores.rule(fill_first=False),
    ]
