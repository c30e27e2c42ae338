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


def reduces_last_axis(node: ir.Node) -> bool:
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


def keeps_dims(value: ir.Value) -> bool:
    return value.producer().attributes.get_int("keepdims", 1) == 1


# Narrow float types whose LayerNorm exporters compute in float32 between two Casts.
NARROW_FLOATS = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def cast_to(value: ir.Value) -> int | None:
    return value.producer().attributes.get_int("to")


class DecomposedLayerNorm(pattern.RewriteRuleClassBase):
    """(x - mean) / sqrt(var + eps) * gamma + beta -> LayerNormalization.

    The division is also written as a product with ``Reciprocal(std)`` or ``1 / std``
    (either operand order), the square as ``Pow(d, 2)`` or ``d * d``. With ``cast``, the
    normalisation runs in float32 between two Casts while x, gamma and beta are
    float16/bfloat16 -- torch's LayerNorm of a half model at opset < 17:
    ``Cast16(normalize(Cast32(x))) * gamma + beta`` becomes one LayerNormalization in the
    narrow type, which computes in float32 inside (``stash_type`` 1), as the Casts did.
    """

    def __init__(self, cast: bool = False):
        super().__init__(name="DecomposedLayerNorm[cast]" if cast else "DecomposedLayerNorm")
        self.cast = cast

    def pattern(self, op, x, two, eps, one, gamma, beta):
        source = op.Cast(x, _outputs=["widened"]) if self.cast else x
        mean = op.ReduceMean(source, _allow_other_inputs=True, _outputs=["mean"])
        centered = op.Sub(source, mean)
        square = pattern.OrValue([op.Pow(centered, two), op.Mul(centered, centered)])
        variance = op.ReduceMean(square, _allow_other_inputs=True, _outputs=["variance"])
        std = op.Sqrt(op.Add(variance, eps))
        inverse = pattern.OrValue([op.Reciprocal(std), op.Div(one, std)])
        normalized = pattern.OrValue([op.Div(centered, std), op.Mul(centered, inverse), op.Mul(inverse, centered)])
        if self.cast:
            normalized = op.Cast(normalized, _outputs=["narrowed"])
        return op.Add(op.Mul(normalized, gamma), beta)

    def check(self, context, x, mean, variance, eps, gamma, beta, two=None, one=None, **tags):
        if two is not None and scalar(two) != 2.0:
            return False
        if one is not None and scalar(one) != 1.0:
            return False
        if scalar(eps) is None or not (is_constant_vector(gamma) and is_constant_vector(beta)):
            return False
        if not (keeps_dims(mean) and keeps_dims(variance)):
            return False
        if self.cast and not self._casts_around(x, tags["widened"], tags["narrowed"], gamma, beta):
            return False
        return reduces_last_axis(mean.producer()) and reduces_last_axis(variance.producer())

    @staticmethod
    def _casts_around(x, widened, narrowed, gamma, beta) -> bool:
        """x is float16/bfloat16, widened to float32 and narrowed back to x's type before gamma/beta (of x's type)."""
        if x.dtype not in NARROW_FLOATS or cast_to(widened) != ir.DataType.FLOAT or cast_to(narrowed) != x.dtype:
            return False
        return all(v.const_value is not None and v.const_value.dtype == x.dtype for v in (gamma, beta))

    def rewrite(self, op, x, eps, gamma, beta, **_):
        return op.LayerNormalization(x, gamma, beta, axis=-1, epsilon=scalar(eps))


class LayerNormCastRoundTrip(pattern.RewriteRuleClassBase):
    """Cast16(LayerNormalization(Cast32(x16), gamma32, beta32)) -> LayerNormalization(x16, gamma16, beta16).

    Mixed-precision models keep LayerNorm (gamma and beta included) in float32 between
    two Casts. The narrow LayerNormalization computes in float32 too; only gamma and beta
    are rounded to x's type, which is what lets SkipLayerNormalization take the residual
    Add before it.
    """

    def pattern(self, op, x, gamma, beta):
        widened = op.Cast(x, _outputs=["widened"])
        normalized = op.LayerNormalization(widened, gamma, beta, _outputs=["normalized"])
        return op.Cast(normalized, _outputs=["narrowed"])

    def check(self, context, x, gamma, beta, widened, normalized, narrowed, **_):
        if x.dtype not in NARROW_FLOATS or cast_to(widened) != ir.DataType.FLOAT or cast_to(narrowed) != x.dtype:
            return False
        node = normalized.producer()
        if node.attributes.get_int("axis", -1) != -1 or len(node.outputs) != 1:
            return False
        return all(is_constant_vector(v) and v.const_value.dtype == ir.DataType.FLOAT for v in (gamma, beta))

    def rewrite(self, op, x, gamma, beta, normalized, **_):
        epsilon = normalized.producer().attributes.get_float("epsilon", 1e-5)
        gamma, beta = (
            op.initializer(ir.tensor(constant_array(v).astype(x.dtype.numpy()), name=f"{v.name}_{x.dtype.name.lower()}"))
            for v in (gamma, beta)
        )
        return op.LayerNormalization(x, gamma, beta, axis=-1, epsilon=epsilon)


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

    def __init__(self, reduce: str = "GlobalAveragePool"):
        # reduce="ReduceMean": the same graph with reduce_mean kept as ReduceMean over the last
        # axis (keras2onnx, ONNX Runtime's TFBertForQuestionAnswering test model).
        super().__init__(name="TfLayerNorm" if reduce == "GlobalAveragePool" else f"TfLayerNorm[{reduce}]")
        self.reduce = reduce
        self._vectors: dict[int, ir.Value] = {}

    def setup(self):
        self._vectors = {}

    def _mean(self, op, value, name):
        if self.reduce == "GlobalAveragePool":
            return op.GlobalAveragePool(value, _outputs=[name])
        return op.ReduceMean(value, _allow_other_inputs=True, _outputs=[name])

    def pattern(self, op, x, eps, gamma, beta):
        mean = self._mean(op, x, "mean")
        centered = op.Sub(x, mean)
        variance = self._mean(op, op.Mul(centered, centered), "variance")
        inv = op.Mul(op.Reciprocal(op.Sqrt(op.Add(variance, eps))), gamma)
        shift = pattern.OrValue([op.Sub(beta, op.Mul(mean, inv)), op.Add(op.Mul(op.Neg(mean), inv), beta)])
        return op.Add(op.Mul(x, inv), shift)

    def check(self, context, x, eps, gamma, beta, mean, variance, **_):
        if scalar(eps) is None:
            return False
        g, b = _row_vector(gamma), _row_vector(beta)
        if g is None or b is None or g.shape != b.shape:
            return False
        if self.reduce == "ReduceMean":
            return all(reduces_last_axis(v.producer()) and keeps_dims(v) for v in (mean, variance))
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


# Element types ONNX Runtime's SkipLayerNormalization kernels take (CPU and CUDA): float and float16.
_SKIP_LN_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


def _skip_ln_takes(value: ir.Value) -> bool:
    return value.dtype is None or value.dtype in _SKIP_LN_TYPES


def _may_be_equal(x, y) -> bool:
    """Two dims an Add combines without provably broadcasting: equal numbers, or no 1 on either side.

    A symbolic dim against a number other than 1 (or another symbol) is taken as equal,
    as exports' residual sums are; a 1 against anything but 1 is a broadcast.
    """
    if isinstance(x, int) and isinstance(y, int):
        return x == y
    return x != 1 and y != 1


def _residual_operands(a: ir.Value, b: ir.Value) -> tuple[ir.Value, ir.Value] | None:
    """(input, skip) for SkipLayerNormalization(a + b), or None if the Add broadcasts otherwise.

    The fused op takes a skip of the input's shape, (1, S, H) or (S, H) -- position
    embeddings added to every batch row -- and no other broadcast. Equal shapes are a
    plain residual, static batch-1 ones included. With a shape unknown the Add is taken
    as a residual.
    """
    if a.shape is None or b.shape is None:
        return a, b
    for first, second in ((a, b), (b, a)):
        big, small = list(first.shape.dims), list(second.shape.dims)
        if len(small) > len(big) or len(big) < 2 or not all(map(_may_be_equal, big[-2:], small[-2:])):
            continue
        leading = small[:-2]
        if len(small) == len(big) and all(map(_may_be_equal, big[:-2], leading)):
            return first, second
        if len(big) == 3 and leading in ([], [1]):
            return first, second
    return None


class SkipLayerNorm(pattern.RewriteRuleClassBase):
    """LayerNormalization(a + b) -> SkipLayerNormalization(a, b).

    With ``with_bias`` it matches LayerNormalization((a + bias) + b) and folds the
    bias in; that variant is tried first, the plain one catches the rest. With
    ``keep_sum`` the residual sum is also read elsewhere (pre-LN models such as
    GPT-2 carry it to the next layer), so the fused op emits it as its 4th output.
    With ``simplified`` the norm is an RMSNorm (SimplifiedLayerNormalization, no beta)
    and the fused op SkipSimplifiedLayerNormalization, whose outputs are laid out alike.
    LayerNormalization's beta is optional (torch's dynamo export writes none for a
    LayerNorm without bias, ModernBERT's ``norm_bias=False``); so is SkipLayerNormalization's,
    which then gets none either.
    """

    def __init__(self, bias: str, keep_sum: bool = False, simplified: bool = False):
        """``bias``: "left" for (a + bias) + b, "right" for b + (a + bias), "none" for a + b."""
        name = ("SkipLayerNorm" if bias == "none" else f"SkipLayerNormBias[{bias}]") + ("+Sum" if keep_sum else "")
        super().__init__(name=name.replace("LayerNorm", "SimplifiedLayerNorm") if simplified else name)
        self.with_bias = bias != "none"
        self.bias_side = bias
        self.keep_sum = keep_sum
        self.simplified = simplified

    def pattern(self, op, a, b, bias, gamma):
        if self.bias_side == "left":
            total = op.Add(op.Add(a, bias), b)
        elif self.bias_side == "right":
            total = op.Add(b, op.Add(a, bias))
        else:
            total = op.Add(a, b)
        if self.simplified:
            out = op.SimplifiedLayerNormalization(total, gamma, _outputs=["out"])
        else:
            out = op.LayerNormalization(total, gamma, _allow_other_inputs=True, _outputs=["out"])  # beta: read in check
        return (out, total) if self.keep_sum else out

    @staticmethod
    def _beta(out: ir.Value) -> ir.Value | None:
        """LayerNormalization's beta, None where it has none (or for SimplifiedLayerNormalization)."""
        inputs = out.producer().inputs
        return inputs[2] if len(inputs) > 2 else None

    def check(self, context, a, b, gamma, out, bias=None, **_):
        node = out.producer()
        if node.attributes.get_int("axis", -1) != -1 or len(node.outputs) != 1:
            return False
        beta = self._beta(out)
        if not is_constant_vector(gamma) or not (beta is None or is_constant_vector(beta)):
            return False
        if self.with_bias and not is_constant_vector(bias):
            return False
        # LayerNormalization lets gamma/beta be another float type than its input (fp16 data, fp32
        # weights); the fused ops bind one type T to all of them
        weights = (b, gamma, beta, bias if self.with_bias else None)
        if a.dtype is not None and any(v is not None and v.dtype is not None and v.dtype != a.dtype for v in weights):
            return False
        if a.const_value is not None or b.const_value is not None:
            return False
        if not _skip_ln_takes(a):
            return False
        return _residual_operands(a, b) is not None

    def rewrite(self, op, a, b, gamma, out, bias=None, **_):
        epsilon = out.producer().attributes.get_float("epsilon", 1e-5)
        a, b = _residual_operands(a, b)
        beta = None if self.simplified else self._beta(out)
        norm = [gamma] if self.simplified else [gamma, beta]
        if self.with_bias:
            norm.append(bias)  # SkipSimplified takes (input, skip, gamma, bias): no beta before it
        elif beta is None:
            norm = [gamma]
        fused = op.SkipSimplifiedLayerNormalization if self.simplified else op.SkipLayerNormalization
        if not self.keep_sum:
            return fused(a, b, *norm, epsilon=epsilon, _domain=MS_DOMAIN)
        out, _mean, _inv_std, total = fused(a, b, *norm, epsilon=epsilon, _domain=MS_DOMAIN, _outputs=4)
        return out, total


def layer_norm_rules() -> list[pattern.RewriteRule]:
    # The cast-round-trip rule runs last: it takes the LayerNormalization the others wrote.
    return [
        DecomposedLayerNorm.rule(cast=True), DecomposedLayerNorm.rule(), TfLayerNorm.rule(), TfLayerNorm.rule("ReduceMean"),
        LayerNormCastRoundTrip.rule(),
    ]


def skip_layer_norm_rules() -> list[pattern.RewriteRule]:
    return [
        SkipLayerNorm.rule(bias=bias, keep_sum=keep_sum, simplified=simplified)
        for simplified in (False, True)
        for keep_sum in (False, True)
        for bias in ("left", "right", "none")
    ]


LAYER_NORM_OPSET = 17  # the first ONNX opset with LayerNormalization
_INPUT_NODE = "tfopt.input_node"  # meta mark: the node was in the model tfopt was given


def mark_input_layer_norms(graph: ir.Graph) -> None:
    """Mark the LayerNormalization nodes the input already has (a model may carry ORT's own below opset 17)."""
    for node in graph:
        if node.op_type == "LayerNormalization" and node.domain == "":
            node.meta[_INPUT_NODE] = True


def new_layer_norms(graph: ir.Graph) -> list[ir.Node]:
    """The LayerNormalization nodes fusion made (the input's own are marked by :func:`mark_input_layer_norms`)."""
    return [
        node for node in graph
        if node.op_type == "LayerNormalization" and node.domain == "" and not node.meta.get(_INPUT_NODE)
    ]


def expand_new_layer_norms(graph: ir.Graph, opset: int) -> int:
    """Below opset 17, write every LayerNormalization tfopt made (and no fusion took) back as ReduceMean/Sub/Mul/Sqrt/Div.

    The fusions that read a LayerNormalization (SkipLayerNormalization, EmbedLayerNormalization)
    are contrib ops valid at any opset; a LayerNormalization left over would be an op the
    model's opset does not have. Returns how many were expanded.
    """
    if opset >= LAYER_NORM_OPSET:
        return 0
    expanded = 0
    for node in new_layer_norms(graph):
        if len(node.outputs) > 1 and any(out.uses() for out in node.outputs[1:]):
            continue  # mean / inverse std read elsewhere: keep the op
        x, gamma, beta = (list(node.inputs) + [None, None])[:3]
        epsilon = node.attributes.get_float("epsilon", 1e-5)
        narrow = x.dtype in NARROW_FLOATS

        def constant(value: float, name: str) -> ir.Node:
            return ir.node("Constant", [], attributes={"value": ir.tensor(np.array(value, np.float32), name=name)})

        nodes = []
        source = x
        if narrow:
            nodes.append(ir.node("Cast", [x], attributes={"to": ir.DataType.FLOAT}))
            source = nodes[-1].outputs[0]
        nodes.append(ir.node("ReduceMean", [source], attributes={"axes": [-1], "keepdims": 1}))
        nodes.append(ir.node("Sub", [source, nodes[-1].outputs[0]]))
        centered = nodes[-1].outputs[0]
        nodes.append(ir.node("Mul", [centered, centered]))
        nodes.append(ir.node("ReduceMean", [nodes[-1].outputs[0]], attributes={"axes": [-1], "keepdims": 1}))
        nodes.append(constant(epsilon, f"{node.name}_epsilon"))
        nodes.append(ir.node("Add", [nodes[-2].outputs[0], nodes[-1].outputs[0]]))
        nodes.append(ir.node("Sqrt", [nodes[-1].outputs[0]]))
        nodes.append(ir.node("Div", [centered, nodes[-1].outputs[0]]))
        if narrow:
            nodes.append(ir.node("Cast", [nodes[-1].outputs[0]], attributes={"to": x.dtype}))
        nodes.append(ir.node("Mul", [nodes[-1].outputs[0], gamma]))
        result = nodes[-1].outputs[0]
        if beta is not None:
            nodes.append(ir.node("Add", [result, beta]))
            result = nodes[-1].outputs[0]
        for index, new in enumerate(nodes):
            new.name = f"{node.name or 'layer_norm'}_expanded_{index}"
        graph.insert_before(node, nodes)
        old = node.outputs[0]
        result.dtype, result.shape = old.dtype, old.shape
        if old.is_graph_output():  # the model's output keeps its name
            name, old.name = old.name, f"{old.name}_unexpanded"
            result.name = name
        old.replace_all_uses_with(result, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        expanded += 1
    return expanded
