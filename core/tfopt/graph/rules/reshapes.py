"""What a Reshape target is made of, read from the graph: constants and sizes of another tensor.

Exporters build targets like ``Cast(Concat(Slice(Shape(x), [0], [1]), [-1], [4], [16]))``.
A rule that drops a flatten/unflatten pair must prove the unflatten restores ``x``'s own
batch and sequence sizes; inferred output shapes cannot say so (in onnx-ir two unknown
dims compare equal), the target's own subgraph can.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..values import constant_array


@dataclass(frozen=True)
class DimOf:
    """Entry of a target that is ``Shape(value)[axis]``."""

    value: ir.Value
    axis: int


Entry = int | DimOf
_SIZE_PRESERVING = ("Unsqueeze", "Squeeze", "Reshape", "Identity")


def rank_of(value: ir.Value | None) -> int | None:
    return value.shape.rank() if value is not None and value.shape is not None else None


def without_casts(value: ir.Value | None) -> ir.Value | None:
    while value is not None and value.producer() is not None and value.producer().op_type == "Cast" and value.producer().domain == "":
        value = value.producer().inputs[0]
    return value


def target_entries(target: ir.Value | None, *, depth: int = 0) -> list[Entry] | None:
    """The entries of a 1-D integer target, each a constant or a ``DimOf``; None if any is neither."""
    value = without_casts(target)
    if value is None or depth > 12:
        return None
    array = constant_array(value)
    if array is not None:
        return [int(v) for v in array.ravel()] if array.ndim <= 1 and array.size <= 64 else None
    node = value.producer()
    if node is None or node.domain != "":
        return None
    if node.op_type == "Concat":
        if node.attributes.get_int("axis", 0) not in (0, -1):
            return None
        entries: list[Entry] = []
        for part in node.inputs:
            piece = target_entries(part, depth=depth + 1)
            if piece is None:
                return None
            entries += piece
        return entries
    if node.op_type in _SIZE_PRESERVING:  # scalar <-> [1]: one entry either way
        inner = target_entries(node.inputs[0], depth=depth + 1)
        if inner is not None and len(inner) != 1 and node.op_type in ("Reshape", "Identity"):
            flat = constant_array(node.inputs[1]) if node.op_type == "Reshape" and len(node.inputs) > 1 else None
            keeps = node.op_type == "Identity" or (flat is not None and flat.ravel().tolist() in ([-1], [len(inner)]))
            return inner if keeps else None  # a 1-D vector reshaped to 1-D keeps its entries
        return inner if inner is not None and len(inner) == 1 else None
    if node.op_type == "Shape":
        source = node.inputs[0]
        rank = rank_of(source)
        if rank is None:
            return None
        start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", rank)
        return [DimOf(source, axis) for axis in range(rank)[start:end]]
    if node.op_type == "Gather" and node.attributes.get_int("axis", 0) == 0:
        inner, indices = target_entries(node.inputs[0], depth=depth + 1), constant_array(node.inputs[1])
        if inner is None and indices is not None and (indices >= 0).all():
            inner = _shape_prefix(node.inputs[0], int(indices.max()) + 1)
        if inner is None or indices is None:
            return None
        try:
            return [inner[int(i)] for i in indices.ravel()]
        except IndexError:
            return None
    if node.op_type == "ConstantOfShape":  # not folded (it could be large): a short one is its entries
        return _filled(node)
    if node.op_type == "Where" and len(node.inputs) == 3:
        return _where_entries(node, depth)
    if node.op_type in _ARITHMETIC and len(node.inputs) == 2:
        return _arithmetic_entries(node, depth)
    if node.op_type == "Slice":
        inner = target_entries(node.inputs[0], depth=depth + 1)
        parts = [constant_array(v) if v is not None else None for v in node.inputs[1:5]]
        starts, ends = parts[0], parts[1]
        axes = parts[2] if len(parts) > 2 and parts[2] is not None else [0]
        steps = parts[3] if len(parts) > 3 and parts[3] is not None else [1]
        if starts is None or ends is None or starts.size != 1 or ends.size != 1:
            return None
        if inner is None and 0 <= int(starts.ravel()[0]) <= int(ends.ravel()[0]) <= 64:
            inner = _shape_prefix(node.inputs[0], int(ends.ravel()[0]))
        if inner is None:
            return None
        if [int(a) for a in axes] not in ([0], [-1]) or [int(s) for s in steps] != [1]:
            return None
        return inner[int(starts.ravel()[0]) : int(ends.ravel()[0])]
    return None


_ARITHMETIC = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b}


def _filled(node: ir.Node) -> list[Entry] | None:
    """ConstantOfShape(constant [n]) with an integer value, n small: n copies of that value."""
    shape = constant_array(node.inputs[0]) if node.inputs else None
    if shape is None or shape.size != 1 or not 0 <= int(shape.ravel()[0]) <= 64:
        return None
    attr = node.attributes.get("value")
    fill = attr.value.numpy() if attr is not None else np.zeros(1, dtype=np.float32)
    if fill.size != 1 or fill.dtype.kind not in "iu":
        return None
    return [int(fill.ravel()[0])] * int(shape.ravel()[0])


def _broadcast(*lists: list[Entry]) -> list[list[Entry]] | None:
    """Entry lists of one length, a one-entry list repeated to it (ONNX broadcasting of 1-D tensors)."""
    length = max(len(entries) for entries in lists)
    if any(len(entries) not in (1, length) for entries in lists):
        return None
    return [entries * length if len(entries) == 1 else entries for entries in lists]


def _number(entry: Entry) -> int | None:
    """An entry's value where it is known: a constant, or a size shape inference gave as a number."""
    if isinstance(entry, DimOf):
        dim = _dim(entry.value, entry.axis)
        return dim if isinstance(dim, int) and dim >= 0 else None
    return entry


def _arithmetic_entries(node: ir.Node, depth: int) -> list[Entry] | None:
    """Add/Sub/Mul of two entry lists whose every entry is a known number (``Gather(Shape(k), 1) * 2``)."""
    sides = [target_entries(v, depth=depth + 1) for v in node.inputs]
    if any(side is None for side in sides) or (pairs := _broadcast(*sides)) is None:
        return None
    combine = _ARITHMETIC[node.op_type]
    result = []
    for a, b in zip(*pairs):
        if node.op_type == "Mul" and (a == 1 or b == 1):
            result.append(b if a == 1 else a)  # x * 1 keeps x, known or not
            continue
        a, b = _number(a), _number(b)
        if a is None or b is None:
            return None
        result.append(combine(a, b))
    return result


def _where_entries(node: ir.Node, depth: int) -> list[Entry] | None:
    """Where(Equal(a, b), x, y) entry by entry, where each Equal is decided.

    torch's TorchScript exporter writes ``expand(shape)`` as Expand(x, Where(shape == -1, 1, shape)).
    An entry read off a tensor's shape is a size, never negative, so it equals no negative constant.
    """
    condition = node.inputs[0].producer() if node.inputs[0] is not None else None
    if condition is None or condition.op_type != "Equal" or condition.domain != "" or len(condition.inputs) != 2:
        return None
    lists = [target_entries(v, depth=depth + 1) for v in (*condition.inputs, *node.inputs[1:])]
    if any(entries is None for entries in lists) or (lists := _broadcast(*lists)) is None:
        return None
    result = []
    for a, b, x, y in zip(*lists):
        if isinstance(a, DimOf) and isinstance(b, DimOf):
            if a != b:
                return None
            equal = True
        elif isinstance(a, DimOf) or isinstance(b, DimOf):
            dim, number = (a, b) if isinstance(a, DimOf) else (b, a)
            known = _number(dim)
            if known is None and number >= 0:
                return None
            equal = known == number
        else:
            equal = a == b
        result.append(x if equal else y)
    return result


def _shape_prefix(value: ir.Value, count: int) -> list[Entry] | None:
    """The first ``count`` entries of ``Shape(source)`` (through casts) when source's rank is not known."""
    node = without_casts(value).producer() if without_casts(value) is not None else None
    if node is None or node.op_type != "Shape" or node.domain != "" or node.attributes.get_int("start", 0) != 0:
        return None
    if node.attributes.get("end") is not None:
        return None
    return [DimOf(node.inputs[0], axis) for axis in range(count)]


def known_rank(value: ir.Value | None) -> int | None:
    """The rank shape inference gave ``value``, else the length of the target of the Reshape that made it."""
    rank = rank_of(value)
    if rank is not None or value is None:
        return rank
    node = value.producer()
    if node is None or node.op_type != "Reshape" or node.domain != "" or len(node.inputs) < 2:
        return None
    entries = target_entries(node.inputs[1])
    return len(entries) if entries is not None else None


def same_size(entry: Entry, value: ir.Value, axis: int) -> bool:
    """``entry`` is provably the size of ``value``'s ``axis``: read from it, or the same known number or named dim."""
    if isinstance(entry, DimOf):
        if entry.value is value and entry.axis == axis:
            return True
        return same_dim(_dim(entry.value, entry.axis), _dim(value, axis))
    dim = _dim(value, axis)
    return isinstance(dim, int) and dim == entry and entry > 0


def _dim(value: ir.Value, axis: int):
    if value.shape is None or not -value.shape.rank() <= axis < value.shape.rank():
        return None
    return value.shape[axis]


def same_dim(a, b) -> bool:
    """Provably equal dims: the same number, or the same named symbol (in onnx-ir anonymous ones compare equal)."""
    if isinstance(a, int) or isinstance(b, int):
        return isinstance(a, int) and isinstance(b, int) and a == b
    names = [getattr(d, "value", None) for d in (a, b)]
    return all(isinstance(n, str) and n for n in names) and names[0] == names[1]


def restores_leading(entries: list[Entry] | None, value: ir.Value, count: int, tail_size: int) -> list[int] | None:
    """The constant tail of ``entries`` if its first ``count`` entries are ``value``'s first ``count`` sizes.

    ``tail_size`` is what the entries after the leading ones must multiply to (the
    projection width); one -1 anywhere is allowed when everything else is proven, as
    Reshape then infers exactly the size left over. Returns the tail with any -1 resolved.
    """
    if entries is None or len(entries) <= count:
        return None
    lead, tail = entries[:count], entries[count:]
    if any(isinstance(e, DimOf) for e in tail) or any(e == 0 for e in tail if isinstance(e, int)):
        return None
    unknown = [i for i, e in enumerate(lead) if not same_size(e, value, i)]
    wildcards = [i for i, e in enumerate(tail) if e == -1]
    if len(unknown) + len(wildcards) > 1 or any(lead[i] != -1 for i in unknown):
        return None
    if wildcards:
        known = 1
        for e in tail:
            known *= e if e != -1 else 1
        if known <= 0 or tail_size % known:
            return None
        tail = [e if e != -1 else tail_size // known for e in tail]
    if any(e <= 0 for e in tail):
        return None
    product = 1
    for e in tail:
        product *= e
    return tail if product == tail_size else None



def int64_constant(op, values: list[int]) -> ir.Value:
    """A 1-D int64 ``Constant`` valid at every opset (``value_ints`` exists from opset 12 only)."""
    return op.Constant(value=ir.tensor(np.array(values, dtype=np.int64)))
