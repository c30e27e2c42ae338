"""Canonical form of a linear layer: ``Add(MatMul(x, W), b)`` on the 3-D hidden state.

GPT-2's Conv1D exports as flatten -> ``Gemm`` -> unflatten, tf2onnx's Tensordot as
flatten -> ``MatMul`` -> unflatten, Keras' EinsumDense as unit-axis 5-D reshapes around a
``Gemm``. Rewriting them to the MatMul + Add form BERT exports use (projections into heads:
``Reshape(Add(MatMul(x, W), b), [0, 0, N, Hd])``) lets every other rule (bias folding into
SkipLayerNormalization/FastGelu, attention projections) match one shape only.
"""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import constant_array, shape_tail
from .reshapes import int64_constant, known_rank, restores_leading, target_entries


def _rank(value: ir.Value) -> int | None:
    return value.shape.rank() if value.shape is not None else None


class FlattenedGemm(pattern.RewriteRuleClassBase):
    """Reshape(Gemm(Reshape(x, [-1, D]), W, b), [..., D']) -> Add(MatMul(x, W), b)."""

    def __init__(self):
        super().__init__(remove_nodes=False)  # see FlattenedMatMul

    def pattern(self, op, x, flat_shape, weight, bias, out_shape):
        flat = op.Reshape(x, flat_shape, _allow_other_attributes=True, _outputs=["flat"])
        gemm = op.Gemm(flat, weight, bias, _allow_other_attributes=True, _outputs=["gemm"])
        return op.Reshape(gemm, out_shape, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, weight, bias, flat, gemm, out, out_shape, **_):
        result = pattern.MatchResult()
        node = gemm.producer()
        if node.attributes.get_float("alpha", 1.0) != 1.0 or node.attributes.get_float("beta", 1.0) != 1.0:
            return result.fail("Gemm with alpha/beta")
        if node.attributes.get_int("transA", 0):
            return result.fail("Gemm with transA")
        w, b = constant_array(weight), constant_array(bias)
        if w is None or w.ndim != 2 or b is None or b.ndim != 1:
            return result.fail("Gemm weight/bias are not constant")
        rows, cols = (w.shape[1], w.shape[0]) if node.attributes.get_int("transB", 0) else w.shape
        if b.shape[0] != cols:
            return result.fail("bias does not match the Gemm output width")
        # Values made by earlier fusions carry no inferred shape yet: unknown is fine as long
        # as whichever side is known says "3-D in, 2-D Gemm, 3-D out".
        if _rank(x) not in (3, None) or _rank(flat) not in (2, None) or _rank(out) not in (3, None):
            return result.fail("not a flatten/unflatten of a 3-D hidden state")
        if _rank(x) is None and _rank(out) is None:
            return result.fail("neither side of the Gemm has a known rank")
        if _rank(x) == 3 and isinstance(x.shape[-1], int) and x.shape[-1] != rows:
            return result.fail("input width differs from the weight's rows")
        if shape_tail(out_shape, 1) not in ([cols], [-1], None):
            return result.fail("unflatten does not restore the Gemm width")
        return result

    def rewrite(self, op, x, weight, bias, gemm, **_):
        if gemm.producer().attributes.get_int("transB", 0):
            transposed = np.ascontiguousarray(constant_array(weight).T)
            weight = op.initializer(ir.tensor(transposed, name=f"{weight.name}_transposed"))
        return op.Add(op.MatMul(x, weight), bias)


class _RefinesShapes(pattern.RewriteRuleClassBase):
    """Gives the values a rule writes the sizes it knows, once the rewriter has copied the old value's shape over.

    The replaced unflatten's shape is often rank-only (``[?, ?, ?]`` where shape
    inference gave up); the rewritten value's batch, sequence and width are known from
    the input and the weight, and later rules (SkipLayerNormalization's broadcast check)
    read them.
    """

    def setup(self):
        self._written: list[tuple[ir.Value, list]] = []

    def _known(self, value: ir.Value, dims: list) -> ir.Value:
        self._written.append((value, dims))
        return value

    def cleanup(self):
        for value, dims in self._written:
            old = list(value.shape.dims) if value.shape is not None and value.shape.rank() == len(dims) else [None] * len(dims)
            merged = [a if isinstance(a, int) or (a is not None and getattr(a, "value", None)) else (b if b is not None else ir.SymbolicDim(None)) for a, b in zip(old, dims)]
            value.shape = ir.Shape(merged)
        self._written = []


def _leading_dims(x: ir.Value, count: int = 2) -> list:
    return list(x.shape.dims[:count]) if x.shape is not None and x.shape.rank() >= count else [None] * count


class FlattenedMatMul(_RefinesShapes):
    """Reshape(MatMul(Reshape(x, [-1, D]), W), [..., D']) -> MatMul(x, W) (tf2onnx's Tensordot)."""

    def __init__(self):
        # The flatten of x is shared by the Q, K and V projections: keep it until all are rewritten.
        super().__init__(remove_nodes=False)

    def pattern(self, op, x, flat_shape, weight, out_shape):
        flat = op.Reshape(x, flat_shape, _allow_other_attributes=True, _outputs=["flat"])
        product = op.MatMul(flat, weight)
        return op.Reshape(product, out_shape, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, weight, flat, flat_shape, out, out_shape, **_):
        w = constant_array(weight)
        if w is None or w.ndim != 2:
            return pattern.MatchResult().fail("weight is not a constant matrix")
        if known_rank(x) != 3 or _rank(flat) not in (2, None) or _rank(out) not in (3, None):
            return pattern.MatchResult().fail("not a flatten/unflatten of a 3-D hidden state")
        if x.shape is not None and isinstance(x.shape[-1], int) and x.shape[-1] != w.shape[0]:
            return pattern.MatchResult().fail("input width differs from the weight's rows")
        if not _flattens_rows(flat_shape, w.shape[0], x):
            return pattern.MatchResult().fail("the flatten is not [-1, width]")
        if restores_leading(target_entries(out_shape), x, 2, w.shape[1]) != [w.shape[1]]:
            return pattern.MatchResult().fail("the unflatten does not restore the input's batch and sequence")
        return pattern.MatchResult()

    def rewrite(self, op, x, weight, **_):
        return self._known(op.MatMul(x, weight), [*_leading_dims(x), constant_array(weight).shape[1]])


def _flattens_rows(flat_shape: ir.Value, width: int, x: ir.Value | None = None) -> bool:
    """``Reshape(x, flat_shape)`` merges every axis but the last of an x that is ``width`` wide.

    A target computed from shapes (tf2onnx's Tensordot stacks ``prod(shape[free])`` and
    ``prod(shape[axes])``) is read as [-1, width] when x is known to be ``width`` wide and the
    target has two entries: the MatMul after it takes ``width`` columns, so wherever the graph
    runs the rows are x's merged leading axes.
    """
    entries = target_entries(flat_shape)
    if entries is not None:
        return len(entries) == 2 and entries[0] == -1 and entries[1] in (width, -1)
    known_width = x is not None and x.shape is not None and x.shape.rank() and x.shape[-1] == width
    return bool(known_width) and flat_shape.shape is not None and flat_shape.shape.rank() == 1 and flat_shape.shape[0] == 2


class FlattenedHeadSplit(_RefinesShapes):
    """Reshape(MatMul(Reshape(x, [-1, D]), W) [+ b], [B, S, N, Hd]) -> Reshape(MatMul(x, W) [+ b], [0, 0, N, Hd]).

    tf2onnx's Tensordot flattens the hidden state for the 2-D MatMul; with no bias Add
    in between (a zero bias, which TF drops), the unflatten and the head split merge into
    one Reshape straight from the 2-D product. The target must restore x's own batch and
    sequence (read from ``Shape(x)``, or -1 for one of them), so the 3-D form is exact.
    """

    def __init__(self):
        super().__init__(remove_nodes=False)  # Q, K and V share the flatten

    def pattern(self, op, x, flat_shape, weight, bias, heads_shape):
        product = op.MatMul(op.Reshape(x, flat_shape, _allow_other_attributes=True, _outputs=["flat"]), weight)
        projected = pattern.OrValue([op.Add(product, bias), product])
        return op.Reshape(projected, heads_shape, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, flat_shape, weight, heads_shape, out, bias=None, **_):
        result = pattern.MatchResult()
        w = constant_array(weight)
        if w is None or w.ndim != 2:
            return result.fail("weight is not a constant matrix")
        if bias is not None and (constant_array(bias) is None or constant_array(bias).shape != (w.shape[1],)):
            return result.fail("bias is not a constant vector of the projection width")
        if known_rank(x) != 3 or (x.shape is not None and isinstance(x.shape[-1], int) and x.shape[-1] != w.shape[0]):
            return result.fail("input is not a 3-D hidden state of the weight's width")
        if not _flattens_rows(flat_shape, w.shape[0], x):
            return result.fail("the flatten is not [-1, width]")
        for node in (out.producer(),):
            if node.attributes.get_int("allowzero", 0):
                return result.fail("Reshape with allowzero")
        tail = restores_leading(target_entries(heads_shape), x, 2, w.shape[1])
        if tail is None or len(tail) != 2:
            return result.fail("the reshape is not (input batch, input sequence, heads, head size)")
        self._tail = tail
        return result

    def rewrite(self, op, x, weight, bias=None, **_):
        projected = op.MatMul(x, weight)
        if bias is not None:
            projected = op.Add(projected, bias)
        return self._known(op.Reshape(projected, int64_constant(op, [0, 0, *self._tail])), [*_leading_dims(x), *self._tail])


_EINSUM_TERM = re.compile(r"^[a-zA-Z]+$")


def _einsum_terms(equation: str) -> tuple[str, str, str] | None:
    """(first, second, output) of a two-operand equation without ellipsis, traces or sums; else None."""
    text = equation.replace(" ", "")
    if "->" not in text or "." in text:
        return None
    inputs, output = text.split("->")
    terms = inputs.split(",")
    if len(terms) != 2 or not all(_EINSUM_TERM.match(t) for t in (*terms, output)):
        return None
    first, second = terms
    if any(len(set(t)) != len(t) for t in (first, second, output)):
        return None
    if set(output) - set(first) - set(second) or (set(first) ^ set(second)) - set(output):
        return None  # a letter summed over in one operand only
    return first, second, output


def _permutation(source: str, target: str) -> list[int]:
    return [source.index(letter) for letter in target]


class EinsumAsMatMul(pattern.RewriteRuleClassBase):
    """Two-operand ``Einsum`` -> ``MatMul`` with the Transposes/Reshapes exporters write by hand.

    tf2onnx keeps Keras' einsums as ONNX ``Einsum`` when it does not lower them. Two
    forms cover attention:

    - a dense layer, ``einsum(x, W)`` with a constant W: x's free axes first, then the
      contracted ones (``abc,cde->abde`` into heads, ``abcd,cde->abe`` merging them) ->
      ``MatMul(x merged, W as a matrix)``, split into heads again when W has two free axes;
    - a batched product of two 4-D tensors with two batch axes, one contracted and one
      free axis each (``aecd,abcd->acbe`` scores, ``acbe,aecd->abcd`` context) ->
      ``MatMul(Transpose(.), Transpose(.))``, the operands ordered so that the output needs
      no Transpose when it can, i.e. ``Q . K^T`` for the scores.
    """

    def pattern(self, op, a, b):
        return op.Einsum(a, b, _outputs=["out"])

    def check(self, context, a, b, out, **_):
        result = pattern.MatchResult()
        terms = _einsum_terms(out.producer().attributes.get_string("equation", ""))
        if terms is None:
            return result.fail("not a two-operand einsum without sums, traces or ellipsis")
        first, second, output = terms
        for value, term in ((a, first), (b, second)):
            if _rank(value) not in (None, len(term)):
                return result.fail("an operand's rank differs from its einsum term")
        weight = constant_array(b)
        if weight is not None and constant_array(a) is None:
            plan = self._dense_plan(first, second, output, weight)
        elif weight is None and constant_array(a) is None:
            plan = self._batched_plan(first, second, output)
        else:
            plan = None
        if plan is None:
            return result.fail(f"einsum {first},{second}->{output} is neither a dense layer nor a per-head product")
        self._plan = plan
        return result

    @staticmethod
    def _dense_plan(first, second, output, weight):
        contracted = [c for c in first if c in second]
        free = [c for c in first if c not in second]
        outside = [c for c in second if c not in first]
        if not contracted or not free or not outside or first != "".join(free + contracted):
            return None
        if output != "".join(free + outside) or weight.ndim != len(second):
            return None
        matrix = weight.transpose(_permutation(second, "".join(contracted + outside)))
        rows = int(np.prod([weight.shape[second.index(c)] for c in contracted]))
        kept = [int(weight.shape[second.index(c)]) for c in outside]
        return ("dense", len(free), len(contracted), matrix.reshape(rows, -1), kept)

    @staticmethod
    def _batched_plan(first, second, output):
        if len(first) != 4 or len(second) != 4 or len(output) != 4:
            return None
        batch = [c for c in output if c in first and c in second]
        contracted = [c for c in first if c in second and c not in output]
        free_first = [c for c in first if c not in second]
        free_second = [c for c in second if c not in first]
        if len(batch) != 2 or len(contracted) != 1 or len(free_first) != 1 or len(free_second) != 1:
            return None
        (k,), (f1,), (f2,) = contracted, free_first, free_second
        swap = output[-2:] == f2 + f1  # out = second . first^T: no Transpose after
        left, right = (second, first) if swap else (first, second)
        free_left, free_right = (f2, f1) if swap else (f1, f2)
        left_order = "".join(batch) + free_left + k
        right_order = "".join(batch) + k + free_right
        product = "".join(batch) + free_left + free_right
        return ("batched", swap, _permutation(left, left_order), _permutation(right, right_order), _permutation(product, output))

    def rewrite(self, op, a, b, **_):
        plan = self._plan
        if plan[0] == "dense":
            _, free, contracted, matrix, kept = plan
            x = a if contracted == 1 else op.Reshape(a, int64_constant(op, [0] * free + [-1]))
            product = op.MatMul(x, op.initializer(ir.tensor(np.ascontiguousarray(matrix), name=f"{b.name}_matrix")))
            return product if len(kept) == 1 else op.Reshape(product, int64_constant(op, [0] * free + kept))
        _, swap, left_perm, right_perm, out_perm = plan
        left, right = (b, a) if swap else (a, b)

        def transposed(value, perm):
            return value if perm == sorted(perm) else op.Transpose(value, perm=perm)

        return transposed(op.MatMul(transposed(left, left_perm), transposed(right, right_perm)), out_perm)




def _leading_dims_of(shape_value: ir.Value, source: ir.Value) -> list[int] | None:
    """The tail of ``Concat(Gather(Shape(source), [0, 1]), tail...)`` when ``tail`` is constant.

    That target restores ``source``'s own batch and sequence sizes: this is what proves a
    preceding ``Reshape(source, [-1, K])`` flattened exactly batch x sequence rows.
    """
    concat = shape_value.producer()
    if concat is None or concat.op_type != "Concat" or len(concat.inputs) < 2:
        return None
    gather = concat.inputs[0].producer()
    if gather is None or gather.op_type != "Gather" or gather.attributes.get_int("axis", 0) != 0:
        return None
    indices = constant_array(gather.inputs[1])
    if indices is None or indices.ravel().tolist() != [0, 1]:
        return None
    shape = gather.inputs[0].producer()
    if shape is None or shape.op_type != "Shape" or shape.attributes or shape.inputs[0] is not source:
        return None
    tail: list[int] = []
    for part in concat.inputs[1:]:
        piece = constant_array(part)
        if piece is None:
            return None
        tail += [int(v) for v in piece.ravel()]
    return tail


class EinsumDense(pattern.RewriteRuleClassBase):
    """Keras ``EinsumDense`` as tf2onnx writes it -> ``MatMul`` on the 3-D hidden state.

    tf2onnx lowers ``einsum("abc,cde->abde")`` (Q/K/V, output split into heads) and
    ``einsum("abcd,cde->abe")`` (attention output, heads merged) to one 2-D ``Gemm``:
    ``Squeeze(Reshape(Gemm(Reshape(v, [-1, K]), W), [B, S, *tail]), unit_axes)``, with
    B and S read from ``Shape(v)``. Unflattening to ``v``'s own B x S rows proves the
    flatten merged exactly v's trailing axes, so this is ``MatMul(merge(v), W)``,
    reshaped to ``[0, 0, N, Hd]`` when the einsum keeps the heads apart. The Q/K/V form
    is the one the attention rule matches; the output form is ``Add(MatMul(x, W), b)``
    once the bias Add that follows is counted in.
    """

    def __init__(self):
        super().__init__(remove_nodes=False)  # Q, K and V share the flatten and the Shape

    def pattern(self, op, v, flat_shape, weight, out_shape, axes):
        flat = op.Reshape(v, flat_shape, _allow_other_attributes=True)
        product = op.Gemm(flat, weight, _allow_other_attributes=True, _outputs=["gemm"])
        return op.Squeeze(op.Reshape(product, out_shape, _allow_other_attributes=True), axes)

    def check(self, context, v, weight, out_shape, axes, gemm, **_):
        result = pattern.MatchResult()
        node = gemm.producer()
        if node.attributes.get_float("alpha", 1.0) != 1.0 or node.attributes.get_int("transA", 0):
            return result.fail("Gemm with alpha or transA")
        w = constant_array(weight)
        if w is None or w.ndim != 2:
            return result.fail("Gemm weight is not a constant matrix")
        width = w.shape[0] if node.attributes.get_int("transB", 0) else w.shape[1]
        if _rank(v) is None or _rank(v) < 3:
            return result.fail("flattened input is not of known rank >= 3")
        tail = _leading_dims_of(out_shape, v)
        if tail is None:
            return result.fail("unflatten does not restore the input's batch and sequence")
        squeezed = constant_array(axes)
        rank = 2 + len(tail)
        if squeezed is None:
            return result.fail("Squeeze axes are not constant")
        squeezed = {int(a) % rank for a in squeezed.ravel()}
        if not squeezed or min(squeezed) < 2 or any(tail[a - 2] != 1 for a in squeezed):
            return result.fail("Squeeze removes more than the unit axes of the einsum")
        kept = [d for i, d in enumerate(tail) if i + 2 not in squeezed]
        if len(kept) not in (1, 2) or any(d <= 0 for d in kept) or int(np.prod(kept)) != width:
            return result.fail(f"output tail {kept} does not hold the Gemm width {width}")
        self._kept = kept
        return result

    def rewrite(self, op, v, weight, gemm, **_):
        w = constant_array(weight)
        if gemm.producer().attributes.get_int("transB", 0):
            weight = op.initializer(ir.tensor(np.ascontiguousarray(w.T), name=f"{weight.name}_transposed"))
        product = op.MatMul(_merged_hidden(op, v), weight)
        if len(self._kept) == 1:
            return product
        return op.Reshape(product, int64_constant(op, [0, 0, *self._kept]))


def _merged_hidden(op, v: ir.Value) -> ir.Value:
    """``v`` (batch, sequence, ...) with its trailing axes merged, written the way other rules match.

    ``Unsqueeze(x, axes >= 2)`` of a 3-D x merges back to x itself; the head merge
    ``Transpose(Unsqueeze(c, [1]), [0, 3, 1, 2, 4])`` of a (B, N, S, Hd) context is
    ``Reshape(Transpose(c, [0, 2, 1, 3]), [0, 0, -1])``, the form exporters write for it.
    """
    node = v.producer()
    if node is not None and node.op_type == "Unsqueeze" and node.domain == "":
        axes = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if axes is not None and _rank(node.inputs[0]) == 3 and all(int(a) >= 2 for a in axes.ravel()):
            return node.inputs[0]
    if node is not None and node.op_type == "Transpose" and list(node.attributes.get_ints("perm", [])) == [0, 3, 1, 2, 4]:
        inner = node.inputs[0].producer()
        axes = constant_array(inner.inputs[1]) if inner is not None and inner.op_type == "Unsqueeze" and len(inner.inputs) > 1 else None
        if axes is not None and axes.ravel().tolist() == [1]:
            heads_last = op.Transpose(inner.inputs[0], perm=[0, 2, 1, 3])
            return op.Reshape(heads_last, int64_constant(op, [0, 0, -1]))
    return op.Reshape(v, int64_constant(op, [0, 0, -1]))


class HeadBias(pattern.RewriteRuleClassBase):
    """Add(Reshape(y, [0, 0, N, Hd]), b[N, Hd]) -> Reshape(Add(y, b.ravel()), [0, 0, N, Hd]).

    An EinsumDense with per-head bias adds it after the head split; moved before the
    split it is the ``Add(MatMul(x, W), b)`` of every other projection (exact: the
    reshape only renames positions).
    """

    def __init__(self):
        super().__init__(remove_nodes=False)

    def pattern(self, op, y, shape, bias):
        return op.Add(op.Reshape(y, shape, _allow_other_attributes=True), bias)

    def check(self, context, y, shape, bias, **_):
        target, b = constant_array(shape), constant_array(bias)
        if target is None or target.size != 4 or target[:2].tolist() != [0, 0] or b is None:
            return pattern.MatchResult().fail("not a constant head split with a constant bias")
        heads = target[2:].tolist()
        if list(b.shape) != heads or min(heads) <= 0:
            return pattern.MatchResult().fail(f"bias shape {list(b.shape)} is not the head shape {heads}")
        producer = y.producer()
        weight = constant_array(producer.inputs[1]) if producer is not None and producer.op_type == "MatMul" else None
        if weight is None or weight.ndim != 2 or weight.shape[1] != heads[0] * heads[1] or _rank(y) not in (3, None):
            return pattern.MatchResult().fail("head split of something other than a 3-D projection")
        return pattern.MatchResult()

    def rewrite(self, op, y, shape, bias, **_):
        flat = op.initializer(ir.tensor(np.ascontiguousarray(constant_array(bias).reshape(-1)), name=f"{bias.name}_flat"))
        return op.Reshape(op.Add(y, flat), shape)


def linear_rules() -> list[pattern.RewriteRule]:
    return [
        EinsumAsMatMul.rule(),
        FlattenedGemm.rule(),
        FlattenedHeadSplit.rule(),
        FlattenedMatMul.rule(),
        EinsumDense.rule(),
        HeadBias.rule(),
    ]
