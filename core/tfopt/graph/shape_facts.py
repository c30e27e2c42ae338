"""Which dims are equal, learned from what the graph computes rather than from what they are named.

torch's documented export (``dynamic_shapes`` with ``Dim.DYNAMIC`` or ``Dim.AUTO``) gives each
input its own symbols: ``input_ids: [s18, s41]``, ``attention_mask: [s43, s41]``, a GPT-2 past
value ``[s10, 4, s89, 8]`` beside its key's ``[s10, 4, s15, 8]``. Nothing in the declarations says
that s89 is s15; the graph does, where it computes with both:

- a MatMul contracts ``A[..., k]`` with ``B[..., k, n]``: both k are one size;
- a Concat joins tensors equal on every axis but its own, and its axis is the sum;
- an elementwise op broadcasts: every input dim of an axis that is not 1 is the output's;
- Transpose, Split, Gather, Squeeze/Unsqueeze and shape-keeping ops move dims without changing them;
- a Reshape whose target reads ``Shape(x)[axis]`` gives its output that dim of x.

:func:`dims_from_targets` (run by ``prepare`` before each constant folding) writes the dims a
computed Reshape or Expand target spells out, which onnx's shape inference does not read.

:func:`unify_dims` collects those facts in a union-find over (value, axis) slots, reasons once
more over sums (``s15 + s70`` equal to ``s70 + s89`` gives s15 = s89), and then writes one
symbol per class into every shape, graph inputs included, and fills unknown dims whose class has
a name or a number. Rules and mask probes then see equal sizes as equal symbols.

One assumption is made, the one torch's exporter makes too: two *named* dims that meet on an
axis of a broadcast are equal (neither is a 1 broadcast against the other). Validation, which
runs the written model on feeds sized from the input's own declarations, catches a graph where
that is false.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import onnx_ir as ir

from .rules.reshapes import DimOf, target_entries
from .values import constant_array

# A symbol: exporters write s10, batch, past_key_values.0.key_past (the legacy exporter's input-named axes).
_IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")
_SUM = re.compile(r"^\s*[A-Za-z_][\w.]*(\s*\+\s*[A-Za-z_][\w.]*)+\s*$")

_BROADCASTING = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "And", "Or", "Xor", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "Where", "Max", "Min", "Sum", "Mean", "PRelu", "BitShift", "BitwiseAnd", "BitwiseOr",
}
# Ops whose first output has their first input's shape.
_SAME_SHAPE = {
    "Cast", "CastLike", "Softmax", "LogSoftmax", "Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "Sqrt", "Neg", "Not",
    "IsNaN", "IsInf", "Identity", "Dropout", "LayerNormalization", "Abs", "Exp", "Log", "Reciprocal", "Clip",
    "Floor", "Ceil", "Round", "Sign", "HardSigmoid", "LeakyRelu", "Elu", "Selu", "Softplus", "Mish", "HardSwish",
    "RMSNormalization", "SimplifiedLayerNormalization",
}

Key = tuple


class _Classes:
    """Union-find over dim keys: ("int", n), ("sym", name) or ("slot", id(value), axis) for an unknown dim."""

    def __init__(self) -> None:
        self.parent: dict[Key, Key] = {}
        self.definite: set[Key] = set()  # roots of classes holding a number other than 1 or a named symbol
        self.merges = 0

    def find(self, key: Key) -> Key:
        self.parent.setdefault(key, key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a: Key, b: Key) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[rb] = ra
        self.merges += 1
        if rb in self.definite or _is_definite(rb) or _is_definite(ra):
            self.definite.add(ra)
        return True

    def is_definite(self, key: Key) -> bool:
        """Known not to be a broadcast 1: it is, or is equal to, a number other than 1 or a named symbol."""
        return _is_definite(key) or self.find(key) in self.definite

    def members(self) -> dict[Key, list[Key]]:
        groups: dict[Key, list[Key]] = {}
        for key in list(self.parent):
            groups.setdefault(self.find(key), []).append(key)
        return groups


def _canonical(name: str) -> str:
    """One spelling per sum of symbols ("s70 + s15" and "s15+s70" are one), other text as it is."""
    if _SUM.match(name):
        return " + ".join(sorted(part.strip() for part in name.split("+")))
    return name.strip()


def _key(value: ir.Value, axis: int) -> Key | None:
    shape = value.shape
    if shape is None or not 0 <= axis < shape.rank():
        return None
    dim = shape[axis]
    if isinstance(dim, int):
        return ("int", dim) if dim >= 0 else ("slot", id(value), axis)
    if dim.value is None or not str(dim.value).strip() or str(dim.value).strip() == "?":
        return ("slot", id(value), axis)
    return ("sym", _canonical(str(dim.value)))


def _is_definite(key: Key) -> bool:
    """A dim known not to be a broadcast 1: a number other than 1, or a named symbol."""
    return (key[0] == "int" and key[1] != 1) or key[0] == "sym"


def _rank(value: ir.Value | None) -> int | None:
    return value.shape.rank() if value is not None and value.shape is not None else None


def _axes(node: ir.Node, rank: int) -> list[int] | None:
    """Constant ``axes`` (input 1 from opset 13, else the attribute), normalized to >= 0."""
    array = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if array is None and node.attributes.get("axes") is not None:
        array = node.attributes.get_ints("axes")
    if array is None:
        return None
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in list(array))


class _Facts:
    def __init__(self) -> None:
        self.classes = _Classes()
        # A MatMul's batch axes as stand-in values, one set per MatMul: a key holds id(value), so the
        # stand-ins must outlive the facts (a freed one's id is reused, and unrelated dims would merge).
        self._batch_axes: dict[int, tuple[ir.Value, ir.Value, ir.Value]] = {}

    def same(self, a: ir.Value | None, axis_a: int, b: ir.Value | None, axis_b: int) -> None:
        if a is None or b is None:
            return
        ka, kb = _key(a, axis_a), _key(b, axis_b)
        if ka is not None and kb is not None:
            self.classes.union(ka, kb)

    def broadcast(self, inputs: list[ir.Value | None], output: ir.Value | None) -> None:
        out_rank = _rank(output)
        ranks = [_rank(v) for v in inputs]
        if out_rank is None or any(r is None for r in ranks):
            return
        for back in range(1, out_rank + 1):
            keys = [_key(v, r - back) for v, r in zip(inputs, ranks) if v is not None and r >= back]
            keys = [k for k in keys if k is not None and k != ("int", 1)]
            out_key = _key(output, out_rank - back)
            definite = [k for k in keys if self.classes.is_definite(k)]
            if definite:
                for key in [*definite, out_key]:
                    if key is not None:
                        self.classes.union(definite[0], key)
            elif len(keys) == 1 and out_key is not None:  # one unknown against 1s: it is the output's
                self.classes.union(keys[0], out_key)

    def node(self, node: ir.Node) -> bool:
        """Record what ``node`` says; True if that merged two classes."""
        before = self.classes.merges
        self._node(node)
        return self.classes.merges != before

    def _node(self, node: ir.Node) -> None:
        if node.domain not in ("", "ai.onnx"):
            return
        op, inputs, outputs = node.op_type, list(node.inputs), list(node.outputs)
        if not inputs or not outputs:
            return
        first, out = inputs[0], outputs[0]
        if op in _BROADCASTING:
            self.broadcast(inputs, out)
        elif op in _SAME_SHAPE and _rank(first) is not None and _rank(first) == _rank(out):
            for axis in range(_rank(out)):
                self.same(first, axis, out, axis)
        elif op == "MatMul" and len(inputs) == 2:
            self._matmul(*inputs, out)
        elif op == "Transpose" and _rank(first) is not None:
            rank = _rank(first)
            perm = node.attributes.get_ints("perm", list(range(rank))[::-1])
            if sorted(perm) == list(range(rank)):  # a malformed perm says nothing
                for axis, source in enumerate(perm):
                    self.same(first, source, out, axis)
        elif op == "Concat":
            self._concat(node, inputs, out)
        elif op == "Split" and _rank(first):
            rank = _rank(first)
            axis = node.attributes.get_int("axis", 0) % rank
            for piece in outputs:
                for other in range(rank):
                    if other != axis:
                        self.same(first, other, piece, other)
        elif op == "Gather" and len(inputs) == 2 and _rank(first) and _rank(inputs[1]) is not None:
            rank, index_rank = _rank(first), _rank(inputs[1])
            axis = node.attributes.get_int("axis", 0) % rank
            for a in range(axis):
                self.same(first, a, out, a)
            for a in range(index_rank):
                self.same(inputs[1], a, out, axis + a)
            for a in range(axis + 1, rank):
                self.same(first, a, out, a - 1 + index_rank)
        elif op in ("Unsqueeze", "Squeeze") and _rank(first) is not None and _rank(out) is not None:
            self._squeeze(node, first, out)
        elif op == "Expand" and _rank(first) is not None and _rank(out) is not None:
            offset = _rank(out) - _rank(first)
            for axis in range(_rank(first)):
                key = _key(first, axis)
                if key is not None and _is_definite(key):
                    self.same(first, axis, out, axis + offset)
        elif op == "Reshape" and len(inputs) > 1 and _rank(out) is not None:
            self._reshape(node, first, inputs[1], out)
        elif op == "Slice" and _rank(first) and _rank(first) == _rank(out):
            axes = _axes_input(node, _rank(first))
            if axes is not None:
                for axis in range(_rank(first)):
                    if axis not in axes:
                        self.same(first, axis, out, axis)

    def _matmul(self, a: ir.Value | None, b: ir.Value | None, out: ir.Value) -> None:
        ra, rb, ro = _rank(a), _rank(b), _rank(out)
        if ra is None or rb is None or ro is None or ra < 2 or rb < 2 or ro < 2:
            return
        self.same(a, ra - 1, b, rb - 2)
        self.same(a, ra - 2, out, ro - 2)
        self.same(b, rb - 1, out, ro - 1)
        # The batch axes broadcast like an elementwise op's.
        if id(out) not in self._batch_axes:
            self._batch_axes[id(out)] = tuple(ir.Value(name=None, shape=ir.Shape(list(v.shape)[:-2])) for v in (out, a, b))
        batch_out, batch_a, batch_b = self._batch_axes[id(out)]
        for proxy, source in ((batch_out, out), (batch_a, a), (batch_b, b)):
            for axis in range(_rank(proxy)):
                self.same(proxy, axis, source, axis)
        self.broadcast([batch_a, batch_b], batch_out)

    def _concat(self, node: ir.Node, inputs: list[ir.Value | None], out: ir.Value) -> None:
        rank = _rank(out)
        if not rank or any(_rank(v) != rank for v in inputs):
            return
        axis = node.attributes.get_int("axis", 0) % rank
        for other in range(rank):
            if other != axis:
                for value in inputs:
                    self.same(value, other, out, other)
        parts = [_key(v, axis) for v in inputs]
        if any(p is None or p[0] == "slot" for p in parts):
            return
        number = sum(p[1] for p in parts if p[0] == "int")
        names = [p[1] for p in parts if p[0] == "sym"]
        if not names:
            total: Key = ("int", number)
        elif number or any(not _IDENTIFIER.fullmatch(n) for n in names):
            return  # only sums of plain symbols are reasoned about
        else:
            total = ("sym", _canonical(" + ".join(names)))
        out_key = _key(out, axis)
        if out_key is not None:
            self.classes.union(out_key, total)

    def _reshape(self, node: ir.Node, data: ir.Value | None, target: ir.Value | None, out: ir.Value) -> None:
        """An entry of the target read off another tensor's shape (``Shape(x)[axis]``) is that dim;
        a 0 entry copies the input's dim (unless ``allowzero``)."""
        entries = target_entries(target)
        if entries is None or len(entries) != _rank(out):
            return
        copies_zero = not node.attributes.get_int("allowzero", 0)
        kept = []  # axes whose entry provably keeps the input's dim there
        for axis, entry in enumerate(entries):
            if isinstance(entry, DimOf):
                self.same(entry.value, entry.axis, out, axis)
                kept.append(entry.value is data and entry.axis == axis)
            elif entry == 0 and copies_zero and data is not None and _rank(data) is not None and axis < _rank(data):
                self.same(data, axis, out, axis)
                kept.append(True)
            else:
                kept.append(data is not None and _key(data, axis) == ("int", entry) and entry > 0)
        # Same rank, every axis but one kept: the -1 there is the input's dim too.
        if entries.count(-1) == 1 and _rank(data) == len(entries) and kept.count(False) == 1:
            axis = entries.index(-1)
            self.same(data, axis, out, axis)

    def _squeeze(self, node: ir.Node, source: ir.Value, out: ir.Value) -> None:
        unsqueeze = node.op_type == "Unsqueeze"
        big, small = (out, source) if unsqueeze else (source, out)
        axes = _axes(node, _rank(big))
        if axes is None:
            return
        kept = [axis for axis in range(_rank(big)) if axis not in axes]
        if len(kept) != _rank(small):
            return
        for small_axis, big_axis in enumerate(kept):
            self.same(small, small_axis, big, big_axis)

    def equate_sums(self) -> bool:
        """Two sums in one class that differ in one term each: those terms are equal. True if anything merged."""
        merged = False
        for root, members in self.classes.members().items():
            sums = [m for m in members if m[0] == "sym" and _SUM.match(m[1])]
            for i, a in enumerate(sums):
                for b in sums[i + 1:]:
                    terms_a = [self.classes.find(("sym", t.strip())) for t in a[1].split("+")]
                    terms_b = [self.classes.find(("sym", t.strip())) for t in b[1].split("+")]
                    only_a, only_b = _multiset_minus(terms_a, terms_b), _multiset_minus(terms_b, terms_a)
                    if len(only_a) == 1 and len(only_b) == 1:
                        merged |= self.classes.union(only_a[0], only_b[0])
        return merged


def _axes_input(node: ir.Node, rank: int) -> list[int] | None:
    """Slice's constant ``axes`` (input 3; all axes when absent and the starts are known)."""
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        array = constant_array(node.inputs[3])
        return None if array is None else [int(a) % rank for a in array.ravel()]
    starts = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if starts is None:
        return None
    return list(range(int(starts.size)))


def _multiset_minus(a: list[Key], b: list[Key]) -> list[Key]:
    rest = list(b)
    left = []
    for item in a:
        if item in rest:
            rest.remove(item)
        else:
            left.append(item)
    return left


def _representative(members: Iterable[Key], input_order: dict[str, int]) -> int | str | None:
    """The dim a class is written as: its number, else a graph input's symbol (first input first), else a plain symbol."""
    numbers = {m[1] for m in members if m[0] == "int"}
    if len(numbers) > 1:
        return None  # contradictory facts: leave the class as it was
    if numbers:
        return numbers.pop()
    names = [m[1] for m in members if m[0] == "sym"]
    if not names:
        return None
    return min(names, key=lambda n: (input_order.get(n, len(input_order)), not _IDENTIFIER.fullmatch(n), len(n), n))


def unify_dims(graph: ir.Graph) -> int:
    """Give equal dims one symbol in every shape of ``graph`` (see the module doc); returns how many dims changed.

    A graph input's symbol is renamed to the symbol of an earlier input it equals, never to a
    number: the model's declared inputs stay dynamic.
    """
    facts = _Facts()
    nodes = list(graph)
    for _ in range(6):  # a fact found late (a sum, a definite dim) can decide an earlier broadcast
        changed = False
        for node in nodes:
            changed |= facts.node(node)
        changed |= facts.equate_sums()
        if not changed:
            break
    input_order: dict[str, int] = {}
    for value in graph.inputs:
        for axis, dim in enumerate(value.shape or ()):
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                input_order.setdefault(_canonical(str(dim.value)), len(input_order))
    chosen: dict[Key, int | str] = {}
    for root, members in facts.classes.members().items():
        if len(members) < 2:
            continue
        representative = _representative(members, input_order)
        if representative is not None:
            chosen[root] = representative
    renames: dict[str, str] = {}  # plain symbol -> plain symbol, for symbols inside expressions
    for root, representative in chosen.items():
        if isinstance(representative, str) and _IDENTIFIER.fullmatch(representative):
            for key in facts.classes.members()[root]:
                if key[0] == "sym" and _IDENTIFIER.fullmatch(key[1]) and key[1] != representative:
                    renames[key[1]] = representative
    for root, representative in chosen.items():  # a sum is written in its terms' chosen symbols
        if isinstance(representative, str) and _SUM.match(representative):
            chosen[root] = _canonical(_IDENTIFIER.sub(lambda m: renames.get(m.group(0), m.group(0)), representative))
    changed = 0
    inputs = {id(v) for v in graph.inputs}
    values = [*graph.inputs, *(out for node in graph for out in node.outputs)]
    for value in values:
        if value.shape is None or value.const_value is not None:
            continue
        dims = list(value.shape)
        for axis, dim in enumerate(dims):
            key = _key(value, axis)
            target = chosen.get(facts.classes.find(key)) if key is not None else None
            if isinstance(target, int):
                new = dim if id(value) in inputs and not isinstance(dim, int) else target
            elif isinstance(target, str):
                new = ir.SymbolicDim(target)
            elif isinstance(dim, ir.SymbolicDim) and dim.value and renames:
                new = ir.SymbolicDim(_IDENTIFIER.sub(lambda m: renames.get(m.group(0), m.group(0)), str(dim.value)))
            else:
                continue
            if _same(new, dim):
                continue
            if id(value) in inputs and isinstance(dim, ir.SymbolicDim) and dim.value and not isinstance(new, ir.SymbolicDim):
                continue
            dims[axis] = new
            changed += 1
        if changed:
            value.shape = ir.Shape(dims)
    return changed


def _same(a, b) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return (a.value or None) == (b.value or None)


# --- Dims a Reshape or Expand target spells out -------------------------------------------------------

Dim = int | str | None  # a number, a named symbol, or unknown


def _known_dim(value: ir.Value | None, axis: int) -> Dim:
    if value is None or value.shape is None or not 0 <= axis < value.shape.rank():
        return None
    dim = value.shape[axis]
    if isinstance(dim, int):
        return dim if dim >= 0 else None
    name = str(dim.value).strip() if dim.value is not None else ""
    return _canonical(name) if name and name != "?" else None


def _entry_dim(entry, data: ir.Value | None, axis: int, copies_zero: bool) -> Dim:
    """What one Reshape target entry (not -1) makes the output's ``axis``."""
    if isinstance(entry, DimOf):
        dim = _known_dim(entry.value, entry.axis)
        return _known_dim(data, axis) if dim == 0 and copies_zero else dim
    if entry == 0:
        return _known_dim(data, axis) if copies_zero else 0
    return entry if entry > 0 else None


def _quotient(total: list, part: list) -> Dim | tuple:
    """``prod(total) / prod(part)`` where it is exact: numbers divide, named symbols (and origin tokens,
    :func:`_axis_origin`) cancel one for one."""
    if any(d is None for d in (*total, *part)):
        return None
    number = 1
    names = [d for d in total if not isinstance(d, int)]
    for d in total:
        number *= d if isinstance(d, int) else 1
    divisor = 1
    for d in part:
        if isinstance(d, int):
            divisor *= d
        elif d in names:
            names.remove(d)
        else:
            return None
    if divisor == 0 or number % divisor:
        return None
    number //= divisor
    if not names:
        return number
    return names[0] if len(names) == 1 and number == 1 else None


def _concat_entries(target: ir.Value | None) -> list | None:
    """A Concat target's entries part by part, None for each entry of a part that is not read
    (a product of a symbol, ``batch * heads``), or None when a part's length is unknown."""
    node = target.producer() if target is not None else None
    if node is None or node.op_type != "Concat" or node.domain != "" or node.attributes.get_int("axis", 0) not in (0, -1):
        return None
    entries: list = []
    for part in node.inputs:
        piece = target_entries(part)
        if piece is None:
            length = part.shape[0] if part is not None and part.shape is not None and part.shape.rank() == 1 else None
            if not isinstance(length, int) or length > 64:
                return None
            piece = [None] * length
        entries += piece
    return entries


def reshape_dims(node: ir.Node) -> list[Dim] | None:
    """The output dims of Reshape ``node`` that its target's entries determine (see :func:`dims_from_targets`)."""
    target = node.inputs[1] if len(node.inputs) > 1 else None
    entries = target_entries(target) if target is not None else None
    if entries is None:
        entries = _concat_entries(target)  # some parts not read: their axes stay unknown, the others get their dims
    if entries is None or entries.count(-1) > 1 or len(entries) > 64:
        return None
    data = node.inputs[0]
    copies_zero = not node.attributes.get_int("allowzero", 0)
    dims = [None if entry is None or entry == -1 else _entry_dim(entry, data, axis, copies_zero) for axis, entry in enumerate(entries)]
    if None in entries:
        return dims  # a -1 beside an unread entry stays unknown
    if -1 in entries and data is not None and data.shape is not None:
        # An unnamed dim cancels against the same dim read through Shape: both are traced to where the axis comes from.
        total = [_dim_or_origin(_known_dim(data, a), data, a) for a in range(data.shape.rank())]
        others = []
        for axis, (dim, entry) in enumerate(zip(dims, entries)):
            if entry == -1:
                continue
            if isinstance(entry, DimOf):
                dim = _dim_or_origin(dim, entry.value, entry.axis)
            elif entry == 0 and copies_zero:
                dim = _dim_or_origin(dim, data, axis)
            others.append(dim)
        quotient = _quotient(total, others)
        dims[entries.index(-1)] = quotient if not isinstance(quotient, tuple) else None
    return dims


# Ops whose output has the input's dims: an axis passes through them unchanged.
_SAME_SHAPE_OPS = frozenset({"Cast", "Identity", "Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "Neg", "Sqrt", "Abs", "Softmax"})
_ELEMENTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div"})


def _axis_origin(value: ir.Value, axis: int) -> tuple[int, int]:
    """(id of the value, axis) the dim at ``value``'s ``axis`` comes from unchanged, traced up through
    same-shape ops, elementwise ops with a constant that does not broadcast that axis, and a MatMul
    by a 2-D constant (every axis but the last). Two reads of one dim meet at the same origin."""
    for _ in range(32):
        node = value.producer()
        rank = _rank(value)
        if node is None or rank is None or node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
            break
        if node.op_type in _SAME_SHAPE_OPS and _rank(node.inputs[0]) == rank:
            value = node.inputs[0]
        elif node.op_type == "MatMul" and axis < rank - 1 and _rank(node.inputs[0]) == rank and _is_constant_of_rank(node.inputs[1], 2):
            value = node.inputs[0]
        elif node.op_type in _ELEMENTWISE_OPS and len(node.inputs) == 2:
            variable = [v for v in node.inputs if v is not None and v.const_value is None]
            constant = [v for v in node.inputs if v is not None and v.const_value is not None]
            if len(variable) != 1 or len(constant) != 1 or _rank(variable[0]) != rank:
                break
            shape = constant[0].const_value.shape
            offset = rank - len(shape)
            if offset < 0 or (axis >= offset and shape[axis - offset] != 1):
                break
            value = variable[0]
        else:
            break
    return id(value), axis


def _is_constant_of_rank(value: ir.Value | None, rank: int) -> bool:
    return value is not None and value.const_value is not None and len(value.const_value.shape) == rank


def _dim_or_origin(dim: Dim, value: ir.Value | None, axis: int) -> Dim | tuple[int, int]:
    """``dim`` when known; else where ``value``'s axis comes from, a token that cancels only against itself."""
    if dim is not None or value is None:
        return dim
    return _axis_origin(value, axis)


def expand_dims(node: ir.Node) -> list[Dim] | None:
    """The output dims of Expand ``node`` that its target's entries determine: each axis broadcasts
    the input's dim against the entry's (a 1 takes the other side; two equal dims are that dim)."""
    entries = target_entries(node.inputs[1]) if len(node.inputs) > 1 else None
    data = node.inputs[0]
    if entries is None or data is None or data.shape is None or len(entries) > 64:
        return None
    in_rank = data.shape.rank()
    rank = max(in_rank, len(entries))
    dims: list[Dim] = []
    for axis in range(rank):
        in_axis, entry_axis = axis - (rank - in_rank), axis - (rank - len(entries))
        a = _known_dim(data, in_axis) if in_axis >= 0 else 1
        entry = entries[entry_axis] if entry_axis >= 0 else 1
        b = _known_dim(entry.value, entry.axis) if isinstance(entry, DimOf) else entry
        if isinstance(b, int) and b < 0:
            return None  # not a size: the model is wrong or means something this does not read
        if a == 1 or a == b:
            dims.append(b)
        elif b == 1:
            dims.append(a)
        elif isinstance(a, int) and a > 1:
            dims.append(a)  # b is a or 1
        elif isinstance(b, int) and b > 1:
            dims.append(b)
        else:
            dims.append(None)
    return dims


def _give_dims(value: ir.Value, dims: list[Dim]) -> int:
    """Fill ``value``'s unknown dims (and named ones that are numbers) from ``dims``; returns how many changed."""
    if value.const_value is not None or all(d is None for d in dims):
        return 0
    current = list(value.shape) if value.shape is not None else [ir.SymbolicDim(None)] * len(dims)
    if len(current) != len(dims):
        return 0
    changed = 0
    for axis, (old, new) in enumerate(zip(current, dims)):
        if new is None or isinstance(old, int):
            continue  # a number stays (a contradiction leaves the shape as shape inference had it)
        name = str(old.value).strip() if old.value is not None else ""
        if isinstance(new, str) and name and name != "?":
            continue  # a named dim keeps its name
        current[axis] = new if isinstance(new, int) else ir.SymbolicDim(new)
        changed += 1
    if changed:
        value.shape = ir.Shape(current)
    return changed


def _fold_shape_read(graph: ir.Graph, node: ir.Node) -> int:
    """Gather(Shape(x), constant indices) of dims that are numbers -> a Constant; returns 1 if folded.

    onnxscript's constant folding folds only a 1-D index; the TorchScript exporter reads
    ``x.size(3)`` with a scalar one, so ``Div(Gather(Shape(x), 3), 2)`` stayed a computation.
    """
    if node.attributes.get_int("axis", 0) != 0 or len(node.inputs) != 2 or node.outputs[0].is_graph_output():
        return 0
    source, out = node.inputs[0], node.outputs[0]
    indices = constant_array(node.inputs[1])
    producer = source.producer() if source is not None else None
    if indices is None or indices.ndim > 1 or producer is None or producer.op_type != "Shape" or producer.domain != "":
        return 0
    entries = target_entries(source)
    if entries is None:
        return 0
    try:
        picked = [entries[int(i)] for i in indices.ravel()]
    except IndexError:
        return 0
    numbers = [_known_dim(e.value, e.axis) if isinstance(e, DimOf) else e for e in picked]
    if not all(isinstance(n, int) for n in numbers):
        return 0
    array = np.array(numbers, dtype=np.int64).reshape(indices.shape)
    constant = ir.node("Constant", [], attributes={"value": ir.tensor(array)}, name=f"{node.name}_static" if node.name else None)
    constant.outputs[0].dtype = ir.DataType.INT64
    constant.outputs[0].shape = ir.Shape(array.shape)
    constant.outputs[0].const_value = ir.tensor(array)
    graph.insert_before(node, constant)
    out.replace_all_uses_with(constant.outputs[0])
    return 1


def dims_from_targets(graph: ir.Graph) -> int:
    """Give Reshape and Expand outputs the dims their computed targets determine, and fold reads
    of sizes that are numbers; returns how many dims (and reads) changed.

    The TorchScript exporter writes ``x.view(b, s, -1, 16)`` as Reshape(x, Concat(Unsqueeze(
    Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), [-1], [16])), and onnx's shape
    inference, which reads only a constant target, leaves the heads tensor [b, s, ?, ?]. Each
    entry says exactly what it makes its axis: Shape(y)[i] is y's dim i, a number is itself, a 0
    copies the input's dim (without ``allowzero``), and a single -1 is the input's size over the
    others' where numbers divide and named dims cancel. An Expand's entries broadcast against its
    input's dims. Nothing is guessed: a dim no entry determines stays as it was. Shape inference
    and constant folding then carry the dims on (``Div(Gather(Shape(heads), 3), 2)`` becomes 8).
    """
    changed = 0
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or not node.outputs:
            continue
        if node.op_type == "Gather":
            changed += _fold_shape_read(graph, node)
        elif node.op_type in ("Reshape", "Expand") and len(node.inputs) == 2 and node.inputs[1] is not None:
            dims = reshape_dims(node) if node.op_type == "Reshape" else expand_dims(node)
            if dims is not None:
                changed += _give_dims(node.outputs[0], dims)
    return changed
