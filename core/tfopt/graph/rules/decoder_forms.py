"""Older GPT-2 exports rewritten, exactly, into the form :class:`attention.CausalSelfAttentionWithPast` matches.

transformers 4.x (as ONNX Runtime's ``convert_to_onnx`` exported it) differs from today's
exports in two places inside attention, transformers 2.x/3.x in a third; each rule here turns
one into today's form and keeps the graph's numbers bit for bit:

- the causal mask is a slice of a constant tril buffer applied with
  ``Where(keep, scores, min)`` before the additive padding mask; that is
  ``scores + (Where(keep, 0, min) + padding)``, the one additive mask the attention rule
  expects (whose meaning it then checks by running it, see :mod:`causal_mask`);
- the scale is ``scores / sqrt(value.size(-1))``, a scalar computed at run time from a
  shape whose head axis is static; it becomes the constant it always is;
- (2.x/3.x) the keys are concatenated already transposed, along the last axis
  (:class:`TransposedKeyConcat`).

They apply only where the keys are concatenated after a past (decoder attention with
past) or, for the causal Where, split from a packed QKV projection (GPT-2 without a cache);
encoder graphs are left to their own rule.

Its stacked ``past_i`` [2, B, N, P, H] unstacked by Split/Squeeze (or Gather) and its
``present_i`` stacked by Concat of Unsqueezes need no rewrite: the attention rule takes
the per-layer key and value wherever they come from and keeps the model's IO.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import constant_array, scalar

# What a fill must be at most for Where(keep, s, fill) and s + Where(keep, 0, fill) to give the same
# softmax: at -1e4 (ONNX Runtime's own mask value, which its generated GPT-2 graphs write), a dropped
# key's exp(fill - max) and exp(s + fill - max) both round to 0 in float32 whenever the row's scores
# are within ~9,800 of each other (exp underflows below -104); transformers' float32 min makes
# s + fill == fill outright. A row with no kept key is a padded query, which nothing reads.
_HUGE_NEGATIVE = -1e4
_SCORE_OPS = {"MatMul", "Div", "Mul"}
_MAX_DEPTH = 16


def reshape_ranks(graph: ir.Graph) -> int:
    """Give Reshape outputs of unknown shape the rank their target's length says; returns how many.

    ONNX's shape inference before opset 13 gives ``Reshape`` with a computed target no
    shape at all, so in convert_to_onnx's opset-11 GPT-2 nothing downstream has a rank and
    no rule can tell a 3-D hidden state from a 2-D one. The rank is exact: it is the
    length of the target vector. Run before shape inference, which takes it from there.
    """
    changed = 0
    for node in graph:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        output, target = node.outputs[0], node.inputs[1]
        if output.shape is not None or target is None or target.shape is None or target.shape.rank() != 1:
            continue
        if isinstance(target.shape[0], int):
            output.shape = ir.Shape([None] * target.shape[0])
            changed += 1
    return changed


def _attends_over_past(scores: ir.Value, *, or_packed: bool = False) -> bool:
    """Scores ``Q . K^T`` (maybe scaled) whose keys are a Concat, past first: decoder attention with past;
    with ``or_packed``, also keys split from a packed QKV projection (GPT-2 exported without a cache).

    The rewrites here serve the decoder rules only; encoder graphs keep the forms their own rule knows.
    """
    node = scores.producer()
    while node is not None and node.op_type in ("Div", "Mul"):
        node = node.inputs[0].producer()
    if node is None or node.op_type != "MatMul":
        return False
    key = node.inputs[1]
    for _ in range(4):
        producer = key.producer() if key is not None else None
        if producer is None:
            return False
        if producer.op_type == "Concat" or (or_packed and producer.op_type == "Split"):
            return True
        if producer.op_type not in ("Transpose", "Mul", "Div", "Reshape"):
            return False
        key = producer.inputs[0]
    return False


def _reaches(value: ir.Value | None, target: ir.Value, limit: int = 400) -> bool:
    """Whether ``target``'s data feeds ``value`` (a bounded walk up the producers; shapes do not count)."""
    stack, seen = [value], set()
    while stack and len(seen) < limit:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        if current is target:
            return True
        seen.add(id(current))
        node = current.producer()
        if node is not None and node.op_type not in ("Shape", "Size"):
            stack.extend(node.inputs)
    return len(seen) >= limit  # too far to tell: assume it does


class WhereMaskedScores(pattern.RewriteRuleClassBase):
    """Softmax(Where(keep, s, fill) [+ m]) -> Softmax(s + (Where(keep, 0, fill) [+ m])).

    Kept scores add 0; dropped ones get ``fill`` or ``s + fill``, which the softmax turns into
    exactly 0 either way for a fill of -1e4 or less (see ``_HUGE_NEGATIVE``; transformers 4.x
    writes float32's min, ONNX Runtime's GPT-2 test graphs -1e4).
    """

    def pattern(self, op, keep, scores, fill, extra):
        selected = op.Where(keep, scores, fill)
        summed = pattern.OrValue([op.Add(selected, extra), op.Add(extra, selected), selected])  # either operand order
        return op.Softmax(summed, _allow_other_attributes=True, _outputs=["probs"])

    def check(self, context, keep, scores, fill, extra=None, **_):
        result = pattern.MatchResult()
        value = scalar(fill)
        if value is None or not value <= _HUGE_NEGATIVE:
            return result.fail("Where does not write a huge negative number (not exact as an additive mask)")
        if keep.dtype is not None and keep.dtype != ir.DataType.BOOL:
            return result.fail("Where condition is not boolean")
        producer = scores.producer()
        if producer is None or producer.op_type not in _SCORE_OPS:
            return result.fail("Where does not select from attention scores")
        if _reaches(keep, scores) or (extra is not None and _reaches(extra, scores)):
            return result.fail("the mask depends on the scores")
        if not _attends_over_past(scores, or_packed=True):
            return result.fail("not decoder attention (the keys are no Concat after a past, nor split from packed QKV)")
        return result

    def rewrite(self, op, keep, scores, fill, probs, extra=None, **_):
        dtype = constant_array(fill).dtype
        zero = op.Constant(value=ir.tensor(np.zeros((), dtype=dtype), name="causal_keep_zero"))
        mask = op.Where(keep, zero, fill)
        if extra is not None:
            mask = op.Add(mask, extra)
        attributes = {}
        axis = probs.producer().attributes.get("axis")
        if axis is not None:
            attributes["axis"] = axis.as_int()
        return op.Softmax(op.Add(scores, mask), **attributes)


def _shape_part(node: ir.Node) -> np.ndarray | None:
    """Gather/Slice of ``Shape(v)`` when every selected axis of v is static, else None."""
    shape_node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    if shape_node is None or shape_node.op_type != "Shape" or shape_node.domain not in ("", "ai.onnx"):
        return None
    shape = shape_node.inputs[0].shape
    if shape is None:
        return None
    rank = shape.rank()
    axes = np.arange(rank)[shape_node.attributes.get_int("start", 0) : shape_node.attributes.get_int("end", rank)]
    if node.op_type == "Gather":
        index = constant_array(node.inputs[1])
        if index is None:
            return None
        picked = np.take(axes, index.astype(np.int64))
    elif node.op_type == "Slice" and len(node.inputs) >= 3:
        bounds = [constant_array(v) if v is not None else None for v in node.inputs[1:5]]
        if bounds[0] is None or bounds[1] is None or bounds[0].size != 1:
            return None
        if len(bounds) > 2 and bounds[2] is not None and int(bounds[2].ravel()[0]) not in (0, -1):
            return None
        step = int(bounds[3].ravel()[0]) if len(bounds) > 3 and bounds[3] is not None else 1
        start, end = (int(b.ravel()[0]) for b in bounds[:2])
        picked = axes[slice(start, end, step)]
    else:
        return None
    dims = [shape[int(a)] for a in np.atleast_1d(picked)]
    if not all(isinstance(d, int) for d in dims):
        return None
    return np.array(dims, dtype=np.int64).reshape(np.shape(picked))


def _evaluate(node: ir.Node, arrays: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """One standard node run by ONNX's reference evaluator on constant inputs."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if a is not None else "" for i, a in enumerate(arrays)]
    outputs = [f"out{i}" for i in range(len(node.outputs))]
    proto = ir.serde.serialize_node(node)
    single = onnx.helper.make_node(node.op_type, names, outputs)
    single.attribute.extend(proto.attribute)
    try:
        evaluator = ReferenceEvaluator(single)
        return evaluator.run(None, {n: a for n, a in zip(names, arrays) if n})
    except Exception:
        return None


def static_value(value: ir.Value | None, depth: int = _MAX_DEPTH) -> np.ndarray | None:
    """The value's data if it follows from constants and static dims of shapes alone, else None."""
    array = constant_array(value)
    if array is not None or value is None or depth == 0:
        return array
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type == "Shape":
        return None
    if node.op_type in ("Gather", "Slice"):
        part = _shape_part(node)
        if part is not None:
            return part
    inputs = [static_value(v, depth - 1) if v is not None else None for v in node.inputs]
    if any(a is None for a, v in zip(inputs, node.inputs) if v is not None):
        return None
    results = _evaluate(node, inputs)
    if results is None:
        return None
    return results[list(node.outputs).index(value)]


class StaticScoreScale(pattern.RewriteRuleClassBase):
    """Div/Mul(MatMul(a, b), f) with f computed from static shapes (``/ sqrt(v.size(-1))``) -> f as a constant."""

    def __init__(self, kind: str):
        super().__init__(name=f"StaticScoreScale[{kind}]")
        self.kind = kind

    def pattern(self, op, a, b, factor):
        return getattr(op, self.kind)(op.MatMul(a, b, _outputs=["product"]), factor)

    def check(self, context, factor, product, **_):
        if constant_array(factor) is not None:
            return pattern.MatchResult().fail("already a constant")
        if not _attends_over_past(product):
            return pattern.MatchResult().fail("not attention over a past (the keys are no Concat)")
        value = static_value(factor)
        if value is None or value.size != 1 or value.dtype.kind != "f":
            return pattern.MatchResult().fail("the scale does not follow from static shapes")
        self._value = value
        return pattern.MatchResult()

    def rewrite(self, op, a, b, **_):
        constant = op.Constant(value=ir.tensor(self._value, name="attention_scale"))
        return getattr(op, self.kind)(op.MatMul(a, b), constant)


_SWAP_LAST = [0, 1, 3, 2]


class TransposedKeyConcat(pattern.RewriteRuleClassBase):
    """Concat(Transpose(past_k, p1), Transpose(k, p2), axis=-1) -> Transpose(Concat(.., .., axis=2), [0, 1, 3, 2]).

    transformers 2.x / 3.x GPT-2 (ONNX Runtime's stored ``gpt2_past.onnx`` and its C++ fusion
    inputs) concatenates the keys already transposed, along the last axis. Each operand's
    perm is its untransposed perm followed by the last-axes swap, so the concat of the
    keys along the sequence axis, transposed once, is the same tensor: today's form.
    """

    def __init__(self):
        super().__init__(remove_nodes=False)  # the old concat may also be a present output

    def pattern(self, op, past_key, key):
        return op.Concat(op.Transpose(past_key, _outputs=["past_t"]), op.Transpose(key, _outputs=["key_t"]), _outputs=["joined"])

    def check(self, context, past_t, key_t, joined, **_):
        result = pattern.MatchResult()
        rank = joined.shape.rank() if joined.shape is not None else 4
        if rank != 4 or joined.producer().attributes.get_int("axis", 0) not in (-1, 3):
            return result.fail("not a concat of 4-D tensors along their last axis")
        for value in (past_t, key_t):
            perm = list(value.producer().attributes.get_ints("perm", []))
            if sorted(perm) != [0, 1, 2, 3] or perm[:2] != [0, 2] and perm[:2] != [0, 1]:
                return result.fail("an operand is not a transposed (batch, heads, ...) tensor")
        return result

    def rewrite(self, op, past_key, key, past_t, key_t, **_):
        def untransposed(value, transposed):
            perm = list(transposed.producer().attributes.get_ints("perm"))
            inner = [perm[i] for i in _SWAP_LAST]
            return value if inner == [0, 1, 2, 3] else op.Transpose(value, perm=inner)

        keys = op.Concat(untransposed(past_key, past_t), untransposed(key, key_t), axis=2)
        return op.Transpose(keys, perm=_SWAP_LAST)


def decoder_form_rules() -> list[pattern.RewriteRule]:
    return [TransposedKeyConcat.rule(), StaticScoreScale.rule("Div"), StaticScoreScale.rule("Mul"), WhereMaskedScores.rule()]
