"""Small questions the fusion checks ask about values (is it a constant, which graph input feeds it),
and :func:`new_initializer`, the one way passes add a constant."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

MS_DOMAIN = "com.microsoft"

# Ops that only reorder, cast or reshape a tensor: tracing "which graph input is this" looks through them.
_PASS_THROUGH = {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Expand", "Flatten"}


def constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The value's tensor if it is an initializer or a folded constant, else None.

    Its data is not read: a weight in external data stays on disk until ``.numpy()``.
    """
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if producer is not None and producer.op_type == "Constant" and producer.domain == "":
            attr = producer.attributes.get("value")
            tensor = attr.value if attr is not None else None
    return tensor


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's data if it is an initializer or a folded constant, else None."""
    tensor = constant_tensor(value)
    return None if tensor is None else tensor.numpy()


def new_initializer(graph: ir.Graph, name: str, array: np.ndarray | ir.TensorProtocol) -> ir.Value:
    """Register ``array`` (or a tensor, such as an ``ir.LazyTensor`` computed when saved) as an
    initializer of ``graph``; ``name`` gets ``_`` suffixes until it is unused."""
    while name in graph.initializers:
        name += "_"
    if isinstance(array, np.ndarray):
        tensor = ir.tensor(array, name=name)
    else:
        tensor, tensor.name = array, name
    value = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def take_over(old: ir.Value, new: ir.Value) -> None:
    """``new`` replaces ``old`` everywhere, with its type and shape; a graph output keeps its name
    (the model's interface), ``old`` is renamed out of the way."""
    if old.dtype is not None:
        new.dtype = old.dtype
    new.shape = old.shape
    if old.is_graph_output():
        name, old.name = old.name, f"{old.name}_replaced"
        new.name = name
    old.replace_all_uses_with(new, replace_graph_outputs=True)


def release_mapped(tensors) -> None:
    """Unmap the external-data weights among ``tensors`` once read: a mapped weight's pages count in
    the process's memory until then, so a pass over a 5 GB model would hold all of it. They are
    mapped again if read later."""
    for tensor in tensors:
        if isinstance(tensor, ir.ExternalTensor):
            try:
                tensor.release()
            except BufferError:  # an array over the mapping is still in use: keep it mapped
                pass


def scalar(value: ir.Value | None) -> float | None:
    """A constant holding exactly one number, as a float; else None."""
    array = constant_array(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(()))


def is_constant_vector(value: ir.Value | None, length: int | None = None) -> bool:
    array = constant_array(value)
    return array is not None and array.ndim == 1 and (length is None or array.shape[0] == length)


def is_constant_matrix(value: ir.Value | None) -> bool:
    array = constant_array(value)
    return array is not None and array.ndim == 2


def shape_tail(shape_value: ir.Value | None, count: int) -> list[int] | None:
    """The last ``count`` entries of a Reshape target when they are constants.

    Exports build targets like Concat(batch, seq, [num_heads], [head_size]); the
    trailing constant entries tell the head split even when batch/seq are dynamic.
    """
    array = constant_array(shape_value)
    if array is not None:
        return [int(v) for v in array[-count:]] if array.size >= count else None
    producer = shape_value.producer() if shape_value is not None else None
    if producer is None or producer.op_type != "Concat":
        return None
    tail: list[int] = []
    for part in reversed(producer.inputs):
        piece = constant_array(part)
        if piece is None:
            break
        tail[:0] = [int(v) for v in piece.ravel()]
        if len(tail) >= count:
            return tail[-count:]
    return None


def source_graph_inputs(value: ir.Value, graph: ir.Graph, *, limit: int = 400) -> set[str]:
    """Names of the graph inputs whose *data* flows into ``value``.

    Shape-only uses (Shape, Size) do not count: a mask built from
    ``attention_mask`` and ``Shape(input_ids)`` depends on the mask's data only.
    """
    graph_inputs = {id(v): v.name for v in graph.inputs}
    found: set[str] = set()
    stack, seen = [value], set()
    while stack and len(seen) < limit:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if id(current) in graph_inputs:
            found.add(graph_inputs[id(current)])
            continue
        producer = current.producer()
        if producer is None or producer.op_type in ("Shape", "Size"):
            continue
        stack.extend(producer.inputs)
    return found


def traced_graph_input(value: ir.Value, graph: ir.Graph) -> ir.Value | None:
    """The graph input this value is (through casts/reshapes only), else None."""
    inputs = {id(v) for v in graph.inputs}
    current: ir.Value | None = value
    for _ in range(8):
        if current is None:
            return None
        if id(current) in inputs:
            return current
        producer = current.producer()
        if producer is None or producer.op_type not in _PASS_THROUGH:
            return None
        current = producer.inputs[0]
    return None


def int32_of(op, value: ir.Value) -> ir.Value:
    """``value`` as int32 (contrib ops want int32 ids and masks); no Cast if it already is."""
    if value.dtype == ir.DataType.INT32:
        return value
    return op.Cast(value, to=ir.DataType.INT32)


# --- Elementwise arithmetic read as a polynomial (activation formulas in any operand order) ---

Monomial = tuple[tuple[int, int], ...]  # ((id of an atom value, power), ...), sorted
_POLYNOMIAL_OPS = {"Add", "Sub", "Mul", "Div", "Neg", "Pow"}


class _TooLarge(Exception):
    pass


def polynomial(
    value: ir.Value, *, max_const_rank: int = 1, max_nodes: int = 40, max_terms: int = 16
) -> tuple[dict[Monomial, float], dict[int, ir.Value]] | None:
    """``value`` as a polynomial with scalar coefficients over "atom" values; None if too large.

    Add/Sub/Mul/Neg, Div by a scalar constant and Pow by a small integer are expanded;
    an operand read anywhere else (more than one use, a graph output) or made by any
    other op is an atom. So ``0.5*x*(1+t)``, ``(x*0.5)*(t+1)`` and ``x*0.5 + 0.5*x*t`` give
    the same {x: 0.5, x*t: 0.5} whatever their operand order or grouping. Scalar
    constants of rank above ``max_const_rank`` stay atoms (they would broadcast the rank).
    Returns (coefficients by monomial, atoms by id).
    """
    atoms: dict[int, ir.Value] = {}
    visited = 0

    def number(v: ir.Value) -> float | None:
        array = constant_array(v)
        if array is None or array.size != 1 or array.ndim > max_const_rank:
            return None
        constant = float(array.reshape(()))
        # NaN and infinity stay atoms: the expansion assumes 0 * c = 0 and x / c = x * (1 / c), false for them.
        return constant if np.isfinite(constant) else None

    def atom(v: ir.Value) -> dict[Monomial, float]:
        atoms[id(v)] = v
        return {((id(v), 1),): 1.0}

    def add(p, q, sign=1.0):
        out = dict(p)
        for mono, coeff in q.items():
            out[mono] = out.get(mono, 0.0) + sign * coeff
        return {mono: coeff for mono, coeff in out.items() if coeff != 0.0}

    def times(p, q):
        out: dict[Monomial, float] = {}
        for m1, c1 in p.items():
            for m2, c2 in q.items():
                powers = dict(m1)
                for key, power in m2:
                    powers[key] = powers.get(key, 0) + power
                mono = tuple(sorted(powers.items()))
                out[mono] = out.get(mono, 0.0) + c1 * c2
        if len(out) > max_terms:
            raise _TooLarge
        return {mono: coeff for mono, coeff in out.items() if coeff != 0.0}

    def expand(v: ir.Value | None, root: bool = False) -> dict[Monomial, float]:
        nonlocal visited
        if v is None:
            raise _TooLarge
        constant = number(v)
        if constant is not None:
            return {(): constant} if constant != 0.0 else {}
        node = v.producer()
        if node is None or node.domain != "" or node.op_type not in _POLYNOMIAL_OPS:
            return atom(v)
        if not root and (len(v.uses()) != 1 or v.is_graph_output()):
            return atom(v)
        visited += 1
        if visited > max_nodes:
            raise _TooLarge
        operands = node.inputs
        if node.op_type == "Neg":
            return add({}, expand(operands[0]), -1.0)
        if len(operands) != 2:
            return atom(v)
        if node.op_type == "Add":
            return add(expand(operands[0]), expand(operands[1]))
        if node.op_type == "Sub":
            return add(expand(operands[0]), expand(operands[1]), -1.0)
        if node.op_type == "Mul":
            return times(expand(operands[0]), expand(operands[1]))
        if node.op_type == "Div":
            divisor = number(operands[1])
            return times(expand(operands[0]), {(): 1.0 / divisor}) if divisor else atom(v)
        exponent = number(operands[1])  # Pow
        if exponent is None or exponent != int(exponent) or not 1 <= exponent <= 4:
            return atom(v)
        base = expand(operands[0])
        result = base
        for _ in range(int(exponent) - 1):
            result = times(result, base)
        return result

    try:
        return expand(value, root=True), atoms
    except _TooLarge:
        return None
