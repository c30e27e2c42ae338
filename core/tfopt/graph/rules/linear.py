"""Canonical form of a linear layer: ``Add(MatMul(x, W), b)`` on the 3-D hidden state.

GPT-2's Conv1D exports as flatten -> ``Gemm`` -> unflatten. Rewriting it to the
MatMul + Add form BERT exports use lets every other rule (bias folding into
SkipLayerNormalization/FastGelu, attention projections) match one shape only.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import constant_array, shape_tail


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


class FlattenedMatMul(pattern.RewriteRuleClassBase):
    """Reshape(MatMul(Reshape(x, [-1, D]), W), [..., D']) -> MatMul(x, W) (tf2onnx's Tensordot)."""

    def __init__(self):
        # The flatten of x is shared by the Q, K and V projections: keep it until all are rewritten.
        super().__init__(remove_nodes=False)

    def pattern(self, op, x, flat_shape, weight, out_shape):
        flat = op.Reshape(x, flat_shape, _allow_other_attributes=True, _outputs=["flat"])
        product = op.MatMul(flat, weight)
        return op.Reshape(product, out_shape, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, weight, flat, out, out_shape, **_):
        w = constant_array(weight)
        if w is None or w.ndim != 2:
            return pattern.MatchResult().fail("weight is not a constant matrix")
        if _rank(x) not in (3, None) or _rank(flat) not in (2, None) or _rank(out) not in (3, None):
            return pattern.MatchResult().fail("not a flatten/unflatten of a 3-D hidden state")
        if _rank(x) is None and _rank(out) is None:
            return pattern.MatchResult().fail("neither side has a known rank")
        if _rank(x) == 3 and isinstance(x.shape[-1], int) and x.shape[-1] != w.shape[0]:
            return pattern.MatchResult().fail("input width differs from the weight's rows")
        if shape_tail(out_shape, 1) not in ([w.shape[1]], [-1], None):
            return pattern.MatchResult().fail("unflatten does not restore the MatMul width")
        return pattern.MatchResult()

    def rewrite(self, op, x, weight, **_):
        return op.MatMul(x, weight)


def linear_rules() -> list[pattern.RewriteRule]:
    return [FlattenedGemm.rule(), FlattenedMatMul.rule()]
