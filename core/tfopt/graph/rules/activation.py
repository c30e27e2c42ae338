"""Gelu family: exact (erf) Gelu, tanh-approximated FastGelu, and their bias-folded forms.

Exporters write Gelu three ways: one ONNX ``Gelu`` op (opset >= 20), the erf
formula ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (opset <= 18), and the tanh formula
``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` (``gelu_new``).
The rules map all of them to ORT's contrib ops and fold the preceding bias Add.
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import MS_DOMAIN, is_constant_vector, polynomial, scalar

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


_QUICK_GELU_ALPHA = 1.702
# Element types ORT's FastGelu / Gelu / QuickGelu kernels take on CPU and CUDA alike.
_CONTRIB_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


class GeluAlgebra(pattern.RewriteRuleClassBase):
    """A Gelu-family formula recognised by its algebra, whatever the operand order and grouping.

    - "tanh": 0.5·x·(1 + tanh(c·x + c·a·x³)), c = √(2/π), a = 0.044715 -> FastGelu(x); the
      argument may be written c·(x + a·x³), c·x·(1 + a·x²), with Pow or Mul;
    - "erf": 0.5·x·(1 + erf(x/√2)) or 0.5·x·(1 - erf(-x/√2)) -> Gelu(x);
    - "sigmoid": x·sigmoid(α·x), α ≈ 1.702 -> QuickGelu(x, alpha=α).

    The pattern is just the outermost Mul (or Add); the check reads the arithmetic under
    it as a polynomial over its leaves (:func:`polynomial`). Commuted pattern variants
    would need 2^n rules for n non-constant Mul/Add nodes. Internal nodes must have no
    other reader, so a shared sub-expression keeps the formula as it is.
    """

    _FUNCTIONS = {"tanh": "Tanh", "erf": "Erf", "sigmoid": "Sigmoid"}

    def __init__(self, kind: str, root: str = "Mul"):
        name = {"tanh": "FastGeluAlgebra", "erf": "GeluAlgebra", "sigmoid": "QuickGelu"}[kind]
        super().__init__(name=name)
        self.kind, self.root = kind, root

    def pattern(self, op, a, b):
        return getattr(op, self.root)(a, b, _outputs=["out"])

    def check(self, context, out, **_):
        found = self._recognise(out)
        if found is None:
            return pattern.MatchResult().fail(f"not a {self.kind} Gelu formula")
        self._x, self._alpha = found
        return pattern.MatchResult()

    def _recognise(self, out: ir.Value) -> tuple[ir.Value, float] | None:
        rank = out.shape.rank() if out.shape is not None else 1
        outer = polynomial(out, max_const_rank=rank)
        if outer is None:
            return None
        terms, atoms = outer
        functions = [v for v in atoms.values() if v.producer() is not None and v.producer().op_type == self._FUNCTIONS[self.kind]]
        if len(functions) != 1 or len(atoms) != 2:
            return None
        (f,) = functions
        (x,) = [v for v in atoms.values() if v is not f]
        if x.dtype not in (None, *_CONTRIB_TYPES) or (x.shape is not None and out.shape is not None and x.shape.rank() != rank):
            return None
        linear, gated = ((id(x), 1),), tuple(sorted(((id(x), 1), (id(f), 1))))
        inner = polynomial(f.producer().inputs[0], max_const_rank=rank)
        if inner is None or set(inner[1]) != {id(x)}:
            return None
        argument = inner[0]
        if self.kind == "sigmoid":
            alpha = argument.get(linear)
            if set(terms) != {gated} or not _close_number(terms[gated], 1.0) or set(argument) != {linear}:
                return None
            return (x, alpha) if _close_number(alpha, _QUICK_GELU_ALPHA) else None
        if set(terms) != {linear, gated} or not _close_number(terms[linear], 0.5):
            return None
        sign = terms[gated] / terms[linear]  # +1: 1 + f(u); -1: 1 - f(u), with f odd
        if not (_close_number(sign, 1.0) or _close_number(sign, -1.0)):
            return None
        if self.kind == "erf":
            expected = {linear: math.copysign(1.0 / _SQRT2, sign)}
        else:
            cubic = ((id(x), 3),)
            expected = {linear: math.copysign(_SQRT_2_OVER_PI, sign), cubic: math.copysign(_SQRT_2_OVER_PI * 0.044715, sign)}
        if set(argument) != set(expected) or not all(_close_number(argument[k], v) for k, v in expected.items()):
            return None
        return x, 0.0

    def rewrite(self, op, out, **_):
        if self.kind == "sigmoid":
            return op.QuickGelu(self._x, alpha=self._alpha, _domain=MS_DOMAIN)
        return op.FastGelu(self._x, _domain=MS_DOMAIN) if self.kind == "tanh" else op.Gelu(self._x, _domain=MS_DOMAIN)


def _close_number(number: float | None, expected: float, rel: float = 1e-3) -> bool:
    return number is not None and math.isclose(number, expected, rel_tol=rel)


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
    """Exact Gelu in its common groupings first (cheap patterns), then any other order; QuickGelu."""
    algebra = [GeluAlgebra.rule("erf", root) for root in ("Mul", "Add")]
    return [*ErfGelu.rules(), *ErfcGelu.rules(), OnnxGelu.rule(), *algebra, GeluAlgebra.rule("sigmoid")]


def fast_gelu_rules() -> list[pattern.RewriteRule]:
    return [*TanhGelu.rules(), *(GeluAlgebra.rule("tanh", root) for root in ("Mul", "Add"))]


def bias_gelu_rules() -> list[pattern.RewriteRule]:
    return [BiasGelu.rule(), FastGeluBias.rule()]

