"""Rotary position embedding (Llama's ``rotate_half`` form) -> ONNX opset-23 ``RotaryEmbedding``.

Hugging Face applies rotary embeddings as ``x * cos + rotate_half(x) * sin`` with
``rotate_half(x) = concat(-x[..., D/2:], x[..., :D/2])`` on the heads ([B, N, S, D]), where
cos and sin ([B, S, D] unsqueezed to [B, 1, S, D]) are computed once per call from the
position ids as ``cos(concat(f, f))`` (or folded by the exporter into a constant [1, 1, S, D]
when it exported at static shapes: its halves are compared instead) (f = positions x inverse frequencies, times a
scaling for some rope types). Their two halves are equal, so the fused op takes the first
half as its per-token cos/sin ([B, S, D/2]) and no position ids: whatever rope scheme
computed f (default, linear, dynamic, YaRN, Phi-3's long rope), the graph still computes it.

The standard op is used rather than ONNX Runtime's contrib ``RotaryEmbedding``: the contrib
op wants a [max_positions, D/2] table indexed by position ids, which a dynamic rope cannot
give. Its computation is the graph's (x1*cos - x2*sin, x2*cos + x1*sin per element pair).
ONNX Runtime's kernel wants cos/sin of x's exact (batch, sequence) and does not broadcast:
encoders such as ModernBERT compute them from ``arange(S).unsqueeze(0)`` (batch 1), so
where the graph does not prove the table's (batch, sequence) to be x's, the half tables are
expanded to them (``Expand`` to ``[B, S, 1]``: the same numbers the graph's broadcasting
Mul reads; one [B, S, D/2] copy per rotary, small beside the attention).
The model's opset must reach 23: the fusion plan includes this rule only where raising it
is exact (:mod:`..opset_raise`).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import constant_array

STANDARD_OPSET = 23  # RotaryEmbedding and Attention (grouped key/value heads) in the default domain
# Ops that map each element on its own: applied to concat(f, f), they keep the halves equal.
_ELEMENTWISE = {"Cos", "Sin", "Cast", "Identity"}


def _slice_bounds(node: ir.Node) -> tuple[int, int, int] | None:
    """(start, end, axis) of a one-axis, step-1 Slice with constant bounds, else None."""
    arrays = [constant_array(v) for v in node.inputs[1:]]
    if len(arrays) < 3 or any(a is None or a.size != 1 for a in arrays):
        return None
    if len(arrays) > 3 and int(arrays[3].reshape(())) != 1:
        return None
    start, end, axis = (int(a.reshape(())) for a in arrays[:3])
    return start, end, axis


def _last_axis(axis: int, rank: int | None) -> bool:
    return axis == -1 or (rank is not None and axis == rank - 1)


def _halves_equal(value: ir.Value, depth: int = 0) -> bool:
    """``value`` is concat(f, f) on its last axis, up to element-wise ops and scalar products."""
    node = value.producer()
    if node is None or node.domain != "" or depth > 6:
        return False
    if node.op_type == "Concat":
        rank = value.shape.rank() if value.shape is not None else None
        axis = node.attributes.get_int("axis", 0)
        return len(node.inputs) == 2 and node.inputs[0] is node.inputs[1] and _last_axis(axis, rank)
    if node.op_type in _ELEMENTWISE:
        return _halves_equal(node.inputs[0], depth + 1)
    if node.op_type in ("Mul", "Div") and len(node.inputs) == 2:
        factor = constant_array(node.inputs[1])
        return factor is not None and factor.size == 1 and _halves_equal(node.inputs[0], depth + 1)
    return False


def _per_token(value: ir.Value) -> ir.Value | None:
    """cos/sin as [B, S, D] from the [B, 1, S, D] the heads are multiplied by (an Unsqueeze on axis 1)."""
    node = value.producer()
    if node is None or node.op_type != "Unsqueeze" or node.domain != "":
        return None
    axes = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if axes is None:
        attr = node.attributes.get("axes")
        axes = np.array(attr.as_ints()) if attr is not None else None
    if axes is None or axes.size != 1 or int(axes.reshape(())) != 1:
        return None
    return node.inputs[0]


def _folded_table(value: ir.Value, half: int) -> np.ndarray | None:
    """A table the exporter folded to a constant (static shapes: [1, 1, S, D]) whose halves are
    equal, as its first half [1, S, D/2]; else None."""
    array = constant_array(value)
    if array is None or array.ndim != 4 or array.shape[1] != 1 or array.shape[3] != 2 * half:
        return None
    if not np.array_equal(array[..., :half], array[..., half:]):
        return None
    return np.ascontiguousarray(array[:, 0, :, :half])


def _same_dim(a, b) -> bool:
    """Two dims the shapes prove equal: equal numbers, or the same named symbol (anonymous dims prove nothing)."""
    if isinstance(a, int) or isinstance(b, int):
        return isinstance(a, int) and isinstance(b, int) and a == b
    return a.value is not None and b.value is not None and a.value == b.value


def _table_fits(table: ir.Value, x: ir.Value) -> bool:
    """The [B', S', D] table is provably of x's ([B, N, S, D]) batch and sequence."""
    return _same_dim(table.shape[0], x.shape[0]) and _same_dim(table.shape[1], x.shape[2])


class RotateHalfRotary(pattern.RewriteRuleClassBase):
    """x * cos + concat(-x2, x1) * sin -> RotaryEmbedding(x, cos[..., :D/2], sin[..., :D/2])."""

    def pattern(self, op, x, cos, sin):
        first = op.Slice(x, _allow_other_inputs=True, _outputs=["first"])
        second = op.Slice(x, _allow_other_inputs=True, _outputs=["second"])
        rotated = op.Concat(op.Neg(second), first, _outputs=["rotated"])
        return op.Add(op.Mul(x, cos), op.Mul(rotated, sin))

    def check(self, context, x, cos, sin, first, second, rotated, **_):
        shape = x.shape
        if shape is None or shape.rank() != 4 or not isinstance(shape[3], int) or shape[3] % 2:
            return False
        half = shape[3] // 2
        bounds = _slice_bounds(first.producer()), _slice_bounds(second.producer())
        if None in bounds:
            return False
        (start1, end1, axis1), (start2, end2, axis2) = bounds
        if not (_last_axis(axis1, 4) and _last_axis(axis2, 4) and _last_axis(rotated.producer().attributes.get_int("axis", 0), 4)):
            return False
        if (start1, min(end1, 2 * half)) != (0, half) or (start2, min(end2, 2 * half)) != (half, 2 * half):
            return False
        for table in (cos, sin):
            if _folded_table(table, half) is not None:
                continue
            per_token = _per_token(table)
            if per_token is None or per_token.shape is None or per_token.shape.rank() != 3 or per_token.shape[2] != 2 * half:
                return False
            if not _halves_equal(per_token):
                return False
        return True

    def rewrite(self, op, x, cos, sin, **_):
        half = x.shape[3] // 2
        halves = []
        for table in (cos, sin):
            folded = _folded_table(table, half)
            if folded is not None:  # a constant [1, S, D/2]
                halves.append((op.Constant(value=ir.tensor(folded)), _same_dim(folded.shape[0], x.shape[0]) and _same_dim(folded.shape[1], x.shape[2])))
                continue
            per_token = _per_token(table)
            sliced = op.Slice(per_token, op.Constant(value_ints=[0]), op.Constant(value_ints=[half]), op.Constant(value_ints=[-1]))
            halves.append((sliced, _table_fits(per_token, x)))
        if all(fits for _, fits in halves):
            return op.RotaryEmbedding(x, *(half_table for half_table, _ in halves))
        # [B, S, 1] from x: what the graph's Mul broadcast to
        target = op.Concat(op.Shape(x, start=0, end=1), op.Shape(x, start=2, end=3), op.Constant(value_ints=[1]), axis=0)
        return op.RotaryEmbedding(x, *(half_table if fits else op.Expand(half_table, target) for half_table, fits in halves))


def rotary_rules() -> list[pattern.RewriteRule]:
    return [RotateHalfRotary.rule()]
