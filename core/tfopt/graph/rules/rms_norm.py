"""RMSNorm (T5, Llama and its descendants, Gemma) -> SimplifiedLayerNormalization.

RMSNorm is LayerNorm without centering and without beta: ``x / sqrt(mean(x^2) + eps) * w``.
Exporters write it out as Pow (or x*x), ReduceMean, Add, Sqrt and a Div (or a product
with ``Reciprocal``, which is how torch's ``rsqrt`` is exported). ONNX Runtime registers
``SimplifiedLayerNormalization`` in the default domain at every opset (onnx's own
``RMSNormalization`` starts at opset 23), so the fused op is valid at the model's opset.
A residual Add in front of it becomes ``SkipSimplifiedLayerNormalization``
(:class:`normalization.SkipLayerNorm` with ``simplified=True``).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import constant_array, is_constant_vector, scalar
from .normalization import NARROW_FLOATS, cast_to, keeps_dims, reduces_last_axis

# Where the float32 computation of a float16/bfloat16 model ends (the narrowing Cast):
# "none": no Casts (the model computes in one type);
# "before_scale": Cast16(normalized) * w16 (Llama, Mistral, Qwen, Phi-3, T5);
# "after_scale": Cast16(normalized * w32) (Gemma computes its scale in float32).
CAST_FORMS = ("none", "before_scale", "after_scale")


class RmsNorm(pattern.RewriteRuleClassBase):
    """x / sqrt(mean(x^2) + eps) * w -> SimplifiedLayerNormalization(x, w).

    With a ``cast`` form other than "none", x is float16/bfloat16 and the normalization
    runs in float32 between two Casts; the fused op takes x in its own type and computes
    in float32 inside (``stash_type`` 1), as the Casts did. Only the rounding of the
    product changes: the source rounds the normalized value, then the product (or, Gemma,
    rounds w to x's type first); the fused op rounds once.
    """

    def __init__(self, cast: str = "none"):
        if cast not in CAST_FORMS:
            raise ValueError(f"cast must be one of {CAST_FORMS}, got {cast!r}")
        super().__init__(name="RmsNorm" if cast == "none" else f"RmsNorm[cast {cast.replace('_', ' ')}]")
        self.cast = cast

    def pattern(self, op, x, two, eps, one, gamma):
        source = x if self.cast == "none" else op.Cast(x, _outputs=["widened"])
        square = pattern.OrValue([op.Pow(source, two), op.Mul(source, source)])
        mean_square = op.ReduceMean(square, _allow_other_inputs=True, _outputs=["mean_square"])
        root = op.Sqrt(op.Add(mean_square, eps))
        inverse = pattern.OrValue([op.Reciprocal(root), op.Div(one, root)])
        normalized = pattern.OrValue([op.Div(source, root), op.Mul(source, inverse), op.Mul(inverse, source)])
        if self.cast == "before_scale":
            return op.Mul(op.Cast(normalized, _outputs=["narrowed"]), gamma)
        scaled = op.Mul(normalized, gamma)
        return op.Cast(scaled, _outputs=["narrowed"]) if self.cast == "after_scale" else scaled

    def check(self, context, x, mean_square, eps, gamma, two=None, one=None, **tags):
        if two is not None and scalar(two) != 2.0:
            return False
        if one is not None and scalar(one) != 1.0:
            return False
        if scalar(eps) is None or not is_constant_vector(gamma) or not keeps_dims(mean_square):
            return False
        if not reduces_last_axis(mean_square.producer()):
            return False
        if self.cast == "none":
            return True
        if x.dtype not in NARROW_FLOATS or cast_to(tags["widened"]) != ir.DataType.FLOAT:
            return False
        if cast_to(tags["narrowed"]) != x.dtype:
            return False
        wanted = x.dtype if self.cast == "before_scale" else ir.DataType.FLOAT
        return gamma.const_value is not None and gamma.const_value.dtype == wanted

    def rewrite(self, op, x, eps, gamma, **_):
        if self.cast == "after_scale":  # the fused op takes the scale in x's type
            array = constant_array(gamma).astype(x.dtype.numpy())
            gamma = op.initializer(ir.tensor(array, name=f"{gamma.name}_{x.dtype.name.lower()}"))
        return op.SimplifiedLayerNormalization(x, gamma, axis=-1, epsilon=scalar(eps), stash_type=1)


def rms_norm_rules() -> list[pattern.RewriteRule]:
    """The Cast forms first: without them the plain rule would match inside their float32 part."""
    return [RmsNorm.rule(cast="before_scale"), RmsNorm.rule(cast="after_scale"), RmsNorm.rule()]
