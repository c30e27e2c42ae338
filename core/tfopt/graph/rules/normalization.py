"""LayerNormalization from its decomposed form, and SkipLayerNormalization (residual Add + LN, with bias).

torch exports LayerNorm as one op at opset >= 17; TF/tf2onnx and older exporters
write it out as ReduceMean/Sub/Pow/Sqrt/Div. Both end up as ORT's
``SkipLayerNormalization`` when a residual Add feeds them, which saves one full
read/write of the hidden state per sub-layer.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import MS_DOMAIN, constant_array, is_constant_vector, scalar


def _reduces_last_axis(node: ir.Node) -> bool:
    """ReduceMean over the last axis only, with the axes as attribute (opset < 18) or input."""
    axes_attr = node.attributes.get("axes")
    if axes_attr is not None:
        axes = list(axes_attr.as_ints())
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant_array(node.inputs[1])
        if array is None:
            return False
        axes = [int(a) for a in array.ravel()]
    else:
        return False
    if len(axes) != 1:
        return False
    rank = node.inputs[0].shape.rank() if node.inputs[0].shape is not None else None
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


class DecomposedLayerNorm(pattern.RewriteRuleClassBase):
    """(x - mean) / sqrt(var + eps) * gamma + beta -> LayerNormalization."""

    def pattern(self, op, x, two, eps, gamma, beta):
        mean = op.ReduceMean(x, _allow_other_inputs=True, _outputs=["mean"])
        centered = op.Sub(x, mean)
        square = pattern.OrValue([op.Pow(centered, two), op.Mul(centered, centered)])
        variance = op.ReduceMean(square, _allow_other_inputs=True, _outputs=["variance"])
        normalized = op.Div(centered, op.Sqrt(op.Add(variance, eps)))
        return op.Add(op.Mul(normalized, gamma), beta)

    def check(self, context, mean, variance, eps, gamma, beta, two=None, **_):
        if two is not None and scalar(two) != 2.0:
            return False
        if scalar(eps) is None or not (is_constant_vector(gamma) and is_constant_vector(beta)):
            return False
        return _reduces_last_axis(mean.producer()) and _reduces_last_axis(variance.producer())

    def rewrite(self, op, x, eps, gamma, beta, **_):
        return op.LayerNormalization(x, gamma, beta, axis=-1, epsilon=scalar(eps))


def _is_last_axis_mean(value: ir.Value) -> bool:
    """``GlobalAveragePool`` on (B, S, H) averages over H: tf2onnx writes LayerNorm's means that way."""
    node = value.producer()
    shape = node.inputs[0].shape if node is not None else None
    return shape is not None and shape.rank() == 3


def _row_vector(value: ir.Value) -> np.ndarray | None:
    """A constant of shape [H] or [1, ..., 1, H] (Keras stores LayerNorm's gamma/beta as [1, 1, H]) as [H]."""
    array = constant_array(value)
    if array is None or array.ndim == 0 or any(d != 1 for d in array.shape[:-1]):
        return None
    return array.reshape(-1)


class TfLayerNorm(pattern.RewriteRuleClassBase):
    """TF's LayerNorm as tf2onnx writes it -> LayerNormalization.

    mean = GAP(x); var = GAP((x - mean)^2); inv = gamma / sqrt(var + eps);
    out = x * inv + shift. ``GlobalAveragePool`` of a (B, S, H) tensor is the mean over
    H, which is why tf2onnx emits it for ``reduce_mean``. The shift is
    ``beta - mean * inv`` (tf_keras, HF) or ``(-mean) * inv + beta`` (Keras 3, whose
    gamma/beta are [1, 1, H]; they are passed on as [H], what the fused ops take).
    """

    def __init__(self):
        super().__init__()
        self._vectors: dict[int, ir.Value] = {}

    def setup(self):
        self._vectors = {}

    def pattern(self, op, x, eps, gamma, beta):
        mean = op.GlobalAveragePool(x, _outputs=["mean"])
        centered = op.Sub(x, mean)
        variance = op.GlobalAveragePool(op.Mul(centered, centered), _outputs=["variance"])
        inv = op.Mul(op.Reciprocal(op.Sqrt(op.Add(variance, eps))), gamma)
        shift = pattern.OrValue([op.Sub(beta, op.Mul(mean, inv)), op.Add(op.Mul(op.Neg(mean), inv), beta)])
        return op.Add(op.Mul(x, inv), shift)

    def check(self, context, x, eps, gamma, beta, mean, variance, **_):
        if scalar(eps) is None:
            return False
        g, b = _row_vector(gamma), _row_vector(beta)
        if g is None or b is None or g.shape != b.shape:
            return False
        return _is_last_axis_mean(mean) and _is_last_axis_mean(variance)

    def _vector(self, op, value: ir.Value) -> ir.Value:
        if value.const_value is not None and len(value.const_value.shape) == 1:
            return value
        if id(value) not in self._vectors:
            name = f"{value.name}_vector"
            self._vectors[id(value)] = op.initializer(ir.tensor(np.ascontiguousarray(_row_vector(value)), name=name))
        return self._vectors[id(value)]

    def rewrite(self, op, x, eps, gamma, beta, **_):
        gamma, beta = self._vector(op, gamma), self._vector(op, beta)
        return op.LayerNormalization(x, gamma, beta, axis=-1, epsilon=scalar(eps))


def _is_broadcast_row(value: ir.Value) -> bool:
    """A (1, S, H)-shaped addend (position embeddings): it must be the skip, not the input."""
    shape = value.shape
    return shape is not None and shape.rank() == 3 and shape[0] == 1


class SkipLayerNorm(pattern.RewriteRuleClassBase):
    """LayerNormalization(a + b) -> SkipLayerNormalization(a, b).

    With ``with_bias`` it matches LayerNormalization((a + bias) + b) and folds the
    bias in; that variant is tried first, the plain one catches the rest. With
    ``keep_sum`` the residual sum is also read elsewhere (pre-LN models such as
    GPT-2 carry it to the next layer), so the fused op emits it as its 4th output.
    """

    def __init__(self, bias: str, keep_sum: bool = False):
        """``bias``: "left" for (a + bias) + b, "right" for b + (a + bias), "none" for a + b."""
        name = ("SkipLayerNorm" if bias == "none" else f"SkipLayerNormBias[{bias}]") + ("+Sum" if keep_sum else "")
        super().__init__(name=name)
        self.with_bias = bias != "none"
        self.bias_side = bias
        self.keep_sum = keep_sum

    def pattern(self, op, a, b, bias, gamma, beta):
        if self.bias_side == "left":
            total = op.Add(op.Add(a, bias), b)
        elif self.bias_side == "right":
            total = op.Add(b, op.Add(a, bias))
        else:
            total = op.Add(a, b)
        out = op.LayerNormalization(total, gamma, beta, _outputs=["out"])
        return (out, total) if self.keep_sum else out

    def check(self, context, a, b, gamma, beta, out, bias=None, **_):
        node = out.producer()
        if node.attributes.get_int("axis", -1) != -1 or len(node.outputs) != 1:
            return False
        if not (is_constant_vector(gamma) and is_constant_vector(beta)):
            return False
        if self.with_bias and not is_constant_vector(bias):
            return False
        if a.const_value is not None or b.const_value is not None:
            return False
        return not (_is_broadcast_row(a) and _is_broadcast_row(b))

    def rewrite(self, op, a, b, gamma, beta, out, bias=None, **_):
        epsilon = out.producer().attributes.get_float("epsilon", 1e-5)
        if _is_broadcast_row(a):
            a, b = b, a
        inputs = [a, b, gamma, beta] + ([bias] if self.with_bias else [])
        if not self.keep_sum:
            return op.SkipLayerNormalization(*inputs, epsilon=epsilon, _domain=MS_DOMAIN)
        out, _mean, _inv_std, total = op.SkipLayerNormalization(*inputs, epsilon=epsilon, _domain=MS_DOMAIN, _outputs=4)
        return out, total


def layer_norm_rules() -> list[pattern.RewriteRule]:
    return [DecomposedLayerNorm.rule(), TfLayerNorm.rule()]


def skip_layer_norm_rules() -> list[pattern.RewriteRule]:
    return [
        SkipLayerNorm.rule(bias=bias, keep_sum=keep_sum)
        for keep_sum in (False, True)
        for bias in ("left", "right", "none")
    ]
