"""Gelu family: exact (erf) Gelu, tanh-approximated FastGelu, and their bias-folded forms.

Exporters write Gelu three ways: one ONNX ``Gelu`` op (opset >= 20), the erf
formula ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (opset <= 18), and the tanh formula
``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` (``gelu_new``).
The rules map all of them to ORT's contrib ops and fold the preceding bias Add.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern

from ..values import MS_DOMAIN, is_constant_vector, scalar

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _close(value, expected: float, rel: float = 1e-3) -> bool:
    number = scalar(value)
    return number is not None and math.isclose(number, expected, rel_tol=rel)


# The groupings ``0.5 * x * factor`` takes in exports (constants are canonically second).
_HALF_FORMS = ("(x*f)*h", "(x*h)*f", "x*(f*h)")


def _half_x_times(op, form, x, factor, half):
    if form == "(x*f)*h":
        return op.Mul(op.Mul(x, factor), half)
    if form == "(x*h)*f":
        return op.Mul(op.Mul(x, half), factor)
    return op.Mul(x, op.Mul(factor, half))


class _GeluFormula(pattern.RewriteRuleClassBase):
    """Base for the formula rules: one rule instance per grouping of the 0.5 * x * (...) product."""

    def __init__(self, form: str):
        super().__init__(name=f"{type(self).__name__}[{form}]")
        self.form = form

    @classmethod
    def rules(cls) -> list[pattern.RewriteRule]:
        return [cls.rule(form) for form in _HALF_FORMS]


class ErfGelu(_GeluFormula):
    """x * 0.5 * (1 + erf(x / sqrt(2))) -> com.microsoft.Gelu(x)."""

    def pattern(self, op, x, sqrt2, one, half):
        inner = pattern.OrValue([op.Div(x, sqrt2), op.Mul(x, sqrt2)], tag_var="scaling", tag_values=["Div", "Mul"])
        return _half_x_times(op, self.form, x, op.Add(op.Erf(inner), one), half)

    def check(self, context, sqrt2, one, half, scaling, **_):
        expected = _SQRT2 if scaling == "Div" else 1.0 / _SQRT2
        return _close(sqrt2, expected) and _close(one, 1.0) and _close(half, 0.5)

    def rewrite(self, op, x, **_):
        return op.Gelu(x, _domain=MS_DOMAIN)


class ErfcGelu(_GeluFormula):
    """x * 0.5 * erfc(-x / sqrt(2)), as TF 2.21 writes exact Gelu, with erfc(z) = 1 - erf(z)."""

    def pattern(self, op, x, sqrt2, one, half):
        inner = pattern.OrValue(
            [op.Div(op.Neg(x), sqrt2), op.Mul(op.Neg(x), sqrt2)], tag_var="scaling", tag_values=["Div", "Mul"]
        )
        return _half_x_times(op, self.form, x, op.Sub(one, op.Erf(inner)), half)

    check = ErfGelu.check

    def rewrite(self, op, x, **_):
        return op.Gelu(x, _domain=MS_DOMAIN)


class TanhGelu(_GeluFormula):
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) -> com.microsoft.FastGelu(x)."""

    def pattern(self, op, x, three, coeff, sqrt_2_over_pi, one, half):
        cube = pattern.OrValue([op.Pow(x, three), op.Mul(op.Mul(x, x), x)])
        inner = op.Mul(op.Add(x, op.Mul(cube, coeff)), sqrt_2_over_pi)
        return _half_x_times(op, self.form, x, op.Add(op.Tanh(inner), one), half)

    def check(self, context, coeff, sqrt_2_over_pi, one, half, three=None, **_):
        if three is not None and not _close(three, 3.0):
            return False
        return (
            _close(coeff, 0.044715)
            and _close(sqrt_2_over_pi, _SQRT_2_OVER_PI)
            and _close(one, 1.0)
            and _close(half, 0.5)
        )

    def rewrite(self, op, x, **_):
        return op.FastGelu(x, _domain=MS_DOMAIN)


class OnnxGelu(pattern.RewriteRuleClassBase):
    """The opset-20 ``Gelu`` op -> the contrib op of the same maths (so the bias fold below applies)."""

    def pattern(self, op, x):
        return op.Gelu(x, _outputs=["out"])

    def rewrite(self, op, x, out, **_):
        approximate = out.producer().attributes.get_string("approximate", "none")
        if approximate == "tanh":
            return op.FastGelu(x, _domain=MS_DOMAIN)
        return op.Gelu(x, _domain=MS_DOMAIN)


class BiasGelu(pattern.RewriteRuleClassBase):
    """Gelu(y + bias) -> BiasGelu(y, bias): one pass over the MatMul output instead of two."""

    def pattern(self, op, y, bias):
        return op.Gelu(op.Add(y, bias), _domain=MS_DOMAIN)

    def check(self, context, y, bias, **_):
        return is_constant_vector(bias) and y.const_value is None

    def rewrite(self, op, y, bias, **_):
        return op.BiasGelu(y, bias, _domain=MS_DOMAIN)


class FastGeluBias(pattern.RewriteRuleClassBase):
    """FastGelu(y + bias) -> FastGelu(y, bias)."""

    def pattern(self, op, y, bias):
        return op.FastGelu(op.Add(y, bias), _domain=MS_DOMAIN)

    def check(self, context, y, bias, **_):
        return is_constant_vector(bias) and y.const_value is None

    def rewrite(self, op, y, bias, **_):
        return op.FastGelu(y, bias, _domain=MS_DOMAIN)


def gelu_rules() -> list[pattern.RewriteRule]:
    return [*ErfGelu.rules(), *ErfcGelu.rules(), OnnxGelu.rule()]


def fast_gelu_rules() -> list[pattern.RewriteRule]:
    return TanhGelu.rules()


def bias_gelu_rules() -> list[pattern.RewriteRule]:
    return [BiasGelu.rule(), FastGeluBias.rule()]

