"""Is this attention mask exactly "causal + key padding"? Asked by running it, before a fusion assumes so.

``MultiHeadAttention(unidirectional=1)`` with a 2-D key padding mask lets query ``i`` (of
``S`` new tokens after ``P`` past ones) see key ``j`` iff ``j <= P + i`` and
``attention_mask[b, j] != 0``. A decoder graph may compute its mask many ways (a constant
tril buffer sliced by lengths, ``Range`` + ``LessOrEqual``, an additive
``(1 - mask) * min``), and a wrong one (``Less`` for ``LessOrEqual``, a slice that ignores the
past) looks the same to a pattern. So the mask's own subgraph is cut out and run on ONNX
Runtime for several (batch, past, sequence) shapes, left-padded and holed masks, and
compared with that rule: kept positions must add exactly 0, dropped ones at most -1e4
(MultiHeadAttention's own mask value). Rows where the rule keeps nothing (padded queries)
are free: nothing reads them.

The subgraph stops at graph inputs, constants, and ``known`` values of the matched
attention (Q, K, V, the past...), which are fed zeros of the shape the pattern implies:
only their shapes can reach the mask, as its data comes from the mask input alone (the
attention rule checks that first).
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir

# (batch, past, sequence): first steps, decode steps, both at once.
PROBE_SHAPES = ((1, 0, 1), (1, 0, 6), (3, 0, 5), (2, 4, 1), (3, 5, 4), (2, 7, 3))
# Longer ones, where a graph that can run them must still be right (a constant causal
# buffer may stop short of them: then the input graph cannot run there either).
LONG_PROBE_SHAPES = ((1, 0, 96), (1, 160, 1))
KEEP_TOLERANCE = 1e-6  # what a kept position may add to its score
DROP_LIMIT = -1e4  # what a dropped position must add at most
MAX_NODES = 600
MAX_CONSTANT_BYTES = 64 << 20

ShapeOf = Callable[[int, int, int], tuple[int, ...]]  # (batch, past, sequence) -> shape
_SUM = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*\+\s*([A-Za-z_][\w.]*)\s*$")
_UNSTACK = {"Squeeze", "Split", "Gather", "Identity", "Slice", "Unsqueeze", "Reshape"}


class _Cone:
    """The nodes computing ``value``, topologically ordered, and where they stop."""

    def __init__(self, value: ir.Value, graph: ir.Graph, known: dict[ir.Value, ShapeOf]):
        self.nodes: list[ir.Node] = []
        self.constants: list[ir.Value] = []
        self.inputs: list[ir.Value] = []
        self.known: list[ir.Value] = []
        self.problem: str | None = None
        graph_inputs = {id(v) for v in graph.inputs}
        known_ids = {id(v) for v in known}
        seen: set[int] = set()
        order: list[ir.Node] = []
        visited_nodes: set[int] = set()
        stack = [value]
        while stack:
            current = stack.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            if id(current) in known_ids:
                self.known.append(current)
            elif current.const_value is not None:
                self.constants.append(current)
            elif id(current) in graph_inputs:
                self.inputs.append(current)
            else:
                node = current.producer()
                if node is None:
                    self.problem = f"{current.name} has no producer"
                    return
                if id(node) not in visited_nodes:
                    visited_nodes.add(id(node))
                    order.append(node)
                    if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
                        self.problem = f"mask subgraph has a control-flow node ({node.op_type})"
                        return
                    stack.extend(node.inputs)
            if len(order) > MAX_NODES:
                self.problem = f"mask subgraph has more than {MAX_NODES} nodes"
                return
        position = {id(node): index for index, node in enumerate(graph)}
        self.nodes = sorted(order, key=lambda node: position.get(id(node), -1))
        size = sum(v.const_value.nbytes for v in self.constants)
        if size > MAX_CONSTANT_BYTES:
            self.problem = f"mask subgraph reads {size >> 20} MB of constants"


def _model(cone: _Cone, output: ir.Value, opsets: dict[str, int]) -> onnx.ModelProto | str:
    values = [*cone.inputs, *cone.known, output, *cone.constants]
    if any(not v.name for v in values) or any(not o.name for n in cone.nodes for o in n.outputs):
        return "a value of the mask subgraph has no name"

    def info(value: ir.Value):
        return onnx.helper.make_tensor_value_info(value.name, _element_type(value), None)

    initializers = []
    for value in cone.constants:
        tensor = ir.serde.serialize_tensor(value.const_value)
        tensor.name = value.name
        initializers.append(tensor)
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(node) for node in cone.nodes],
        "mask_probe",
        [info(v) for v in [*cone.inputs, *cone.known]],
        [info(output)],
        initializers,
    )
    imports = [onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items()]
    return onnx.helper.make_model(graph, opset_imports=imports, ir_version=onnx.IR_VERSION_2024_3_25)


def _element_type(value: ir.Value) -> int:
    """The value's ONNX element type; float32 for values made by earlier rewrites (no type recorded)."""
    return int(value.dtype) if value.dtype is not None else int(ir.DataType.FLOAT)


def numpy_type(value: ir.Value):
    return onnx.helper.tensor_dtype_to_np_dtype(_element_type(value))


def _traced_input(value: ir.Value, graph: ir.Graph) -> ir.Value | None:
    """The graph input a per-layer past value is unstacked from (Split/Gather/Squeeze), else None."""
    inputs = {id(v) for v in graph.inputs}
    current: ir.Value | None = value
    for _ in range(6):
        if current is None:
            return None
        if id(current) in inputs:
            return current
        node = current.producer()
        if node is None or node.op_type not in _UNSTACK:
            return None
        current = node.inputs[0]
    return None


def _symbols(value: ir.Value) -> list[int | str | None]:
    if value.shape is None:
        return []
    return [dim if isinstance(dim, int) else (dim.value or None) for dim in value.shape]


# Sizes the known values' shape functions are probed with: distinct, so each axis tells its role.
_ROLE_PROBE = {"batch": 101, "past": 103, "sequence": 107}
_ROLE_PROBE["total"] = _ROLE_PROBE["past"] + _ROLE_PROBE["sequence"]


class MaskSizer:
    """Shapes for the graph inputs the mask reads, from their symbolic dims' roles.

    The mask input is (batch, total); the matched attention's own tensors (``known``:
    value -> shape as a function of batch, past and sequence) say what their symbols are,
    whatever the exporter named them; the past input's axis -2 is the past; any one
    other symbol is the new tokens' length. A dim it cannot name makes the check refuse.
    """

    def __init__(self, mask_input: ir.Value | None, past: ir.Value | None, graph: ir.Graph, known: dict[ir.Value, ShapeOf] | None = None):
        self.roles: dict[str, str] = {}
        self.fixed: dict[str, int] = {}  # roles a static graph fixes: {"batch": 2, "total": 8}
        dims = _symbols(mask_input) if mask_input is not None else []
        if len(dims) == 2:
            for dim, role in zip(dims, ("batch", "total")):
                if isinstance(dim, str):
                    self.roles[dim] = role
                elif isinstance(dim, int):
                    self.fixed[role] = dim
        by_size = {size: role for role, size in _ROLE_PROBE.items()}
        for value, shape_of in (known or {}).items():
            dims = _symbols(value)
            probe = shape_of(_ROLE_PROBE["batch"], _ROLE_PROBE["past"], _ROLE_PROBE["sequence"])
            if len(dims) != len(probe):
                continue
            for dim, size in zip(dims, probe):
                if isinstance(dim, str) and size in by_size:
                    self.roles.setdefault(dim, by_size[size])
                elif isinstance(dim, int) and size in by_size:
                    self.fixed.setdefault(by_size[size], dim)
        source = _traced_input(past, graph) if past is not None else None
        if source is not None and len(_symbols(source)) >= 4:
            # This layer's past input, and every input of the same layout (the other layers'
            # pasts, which a graph may read the past length from): axis -2 is the past.
            layout = [d if isinstance(d, int) else None for d in _symbols(source)]
            for value in graph.inputs:
                dims = _symbols(value)
                if value is not source and [d if isinstance(d, int) else None for d in dims] != layout:
                    continue
                for dim, role in ((dims[-2], "past"), (dims[-4], "batch")):
                    if isinstance(dim, str):
                        self.roles.setdefault(dim, role)

    def fitted(self, shapes) -> list[tuple[int, int, int]]:
        """The probe (batch, past, sequence) shapes moved onto the sizes a static graph fixes, without repeats."""
        fitted = []
        for batch, past, sequence in shapes:
            batch = self.fixed.get("batch", batch)
            sequence = self.fixed.get("sequence", sequence)
            if "total" in self.fixed:
                if "sequence" in self.fixed or self.fixed["total"] - past < 1:
                    past = self.fixed["total"] - sequence
                else:
                    sequence = self.fixed["total"] - past
            past = self.fixed.get("past", past)
            shape = (batch, past, sequence)
            if past >= 0 and sequence >= 1 and shape not in fitted:
                fitted.append(shape)
        return fitted

    def shape(self, value: ir.Value, batch: int, past: int, sequence: int) -> tuple[int, ...] | str:
        sizes = {"batch": batch, "past": past, "total": past + sequence, "sequence": sequence}
        dims = _symbols(value)
        if not dims:
            return f"input {value.name} has no declared shape"
        unnamed = {d for d in dims if isinstance(d, str) and d not in self.roles and not _SUM.match(d)}
        if len(unnamed) == 1 and "sequence" not in self.roles.values():
            self.roles[unnamed.pop()] = "sequence"
        shape = []
        for dim in dims:
            if isinstance(dim, int):
                shape.append(dim)
            elif isinstance(dim, str) and dim in self.roles:
                shape.append(sizes[self.roles[dim]])
            elif isinstance(dim, str) and _SUM.match(dim) and all(p in self.roles for p in _SUM.match(dim).groups()):
                shape.append(sum(sizes[self.roles[p]] for p in _SUM.match(dim).groups()))
            else:
                return f"cannot tell which length axis {dim!r} of input {value.name} is"
        return tuple(shape)


def _padding(batch: int, total: int, rng: np.random.Generator, holes: bool) -> np.ndarray:
    """Row 0 full; others left-padded by random amounts, or (``holes``) with random gaps, last slot kept."""
    mask = np.ones((batch, total), dtype=np.int64)
    for row in range(1, batch):
        if holes:
            mask[row] = rng.integers(0, 2, size=total)
        else:
            mask[row, : int(rng.integers(0, total))] = 0
        mask[row, -1] = 1
    return mask


def _compare(result: np.ndarray, allowed: np.ndarray, additive: bool) -> str | None:
    batch, _, sequence, total = allowed.shape
    try:
        result = np.broadcast_to(result, (batch, result.shape[1] if result.ndim == 4 else 1, sequence, total))
    except ValueError:
        return f"mask of shape {list(result.shape)} does not cover (batch, heads, {sequence}, {total})"
    rows = np.broadcast_to(allowed.any(axis=-1, keepdims=True), result.shape)
    allowed = np.broadcast_to(allowed, result.shape)
    if additive:
        kept = np.abs(result[allowed & rows]) <= KEEP_TOLERANCE
        dropped = result[~allowed & rows] <= DROP_LIMIT
    else:
        kept = result[allowed & rows].astype(bool)
        dropped = ~result[~allowed & rows].astype(bool)
    if not kept.all():
        return "the mask drops a position a causal mask keeps"
    if not dropped.all():
        return "the mask keeps a position a causal mask drops"
    return None


def mask_session(mask: ir.Value, *, model: ir.Model, graph: ir.Graph, known: dict[ir.Value, ShapeOf]):
    """(the mask's cone, an ONNX Runtime session computing ``mask`` from the cone's inputs), or why there is none.

    Shared by the decoder check here and the encoder's key-padding check (:mod:`padding_mask`).
    """
    import onnxruntime as ort

    cone = _Cone(mask, graph, known)
    if cone.problem:
        return cone.problem
    proto = _model(cone, mask, dict(model.opset_imports))
    if isinstance(proto, str):
        return proto
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    try:
        return cone, ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        return f"mask subgraph does not load in ONNX Runtime ({str(exc).splitlines()[0][:120]})"


def causal_mask_problem(
    mask: ir.Value,
    *,
    model: ir.Model,
    graph: ir.Graph,
    mask_input: ir.Value | None,
    known: dict[ir.Value, ShapeOf],
    past: ir.Value | None = None,
    additive: bool = True,
    with_past: bool = True,
) -> str | None:
    """None if ``mask`` is the causal + key padding mask of ``mask_input``; else why not, in a few words.

    ``mask`` is what is added to the scores (``additive``) or a boolean "keep" condition;
    ``known`` maps values of the matched attention to their shape; ``past`` is the
    per-layer past key, to name the past axis of the graph input it comes from; ``mask_input``
    None for a mask computed from shapes alone (no padding: it must be exactly causal); ``with_past=False``
    for an attention without a cache (every probe then has past 0).
    """
    cut = mask_session(mask, model=model, graph=graph, known=known)
    if isinstance(cut, str):
        return cut
    cone, session = cut
    sizer = MaskSizer(mask_input, past, graph, known)
    if not with_past:  # an attention without a cache: its mask covers the new tokens only
        sizer.fixed["past"] = 0
    rng = np.random.default_rng(0)
    mask_type = numpy_type(mask_input) if mask_input is not None else np.int64
    probes = [(shape, holes, False) for shape in sizer.fitted(PROBE_SHAPES) for holes in (False, True)]
    probes += [(shape, False, True) for shape in sizer.fitted(LONG_PROBE_SHAPES)]
    ran, longest, with_past_ran = 0, 0, False
    failures: list[tuple[int, str]] = []  # (total length, why): a graph may stop at a length (a causal buffer)
    for (batch, past_length, sequence), holes, optional in probes:
        total = past_length + sequence
        if mask_input is None and holes:
            continue  # no padding to vary: the mask must be the causal one alone
        padding = _padding(batch, total, rng, holes) if mask_input is not None else np.ones((batch, total), np.int64)
        feed = {}
        for value in cone.inputs:
            if value is mask_input:
                feed[value.name] = padding.astype(mask_type)
                continue
            shape = sizer.shape(value, batch, past_length, sequence)
            if isinstance(shape, str):
                return shape
            feed[value.name] = np.zeros(shape, numpy_type(value))
        for value in cone.known:
            feed[value.name] = np.zeros(known[value](batch, past_length, sequence), numpy_type(value))
        try:
            (result,) = session.run([mask.name], feed)
        except Exception as exc:
            if not optional:
                failures.append((total, f"mask subgraph fails at batch {batch}, past {past_length}, length {sequence} ({str(exc).splitlines()[0][:120]})"))
            continue
        causal = np.arange(total)[None, :] <= past_length + np.arange(sequence)[:, None]
        allowed = (causal[None, :, :] & (padding[:, None, :] != 0))[:, None]
        problem = _compare(np.asarray(result), allowed, additive)
        if problem and problem.startswith("mask of shape"):
            # a mask that cannot cover the scores stops the input graph there too: its length limit
            if not optional:
                failures.append((total, f"{problem} (batch {batch}, past {past_length}, length {sequence})"))
            continue
        ran += 1
        longest = max(longest, total)
        with_past_ran |= past_length > 0
        if problem:
            kind = "holed" if holes else "left-padded"
            return f"{problem} (batch {batch}, past {past_length}, length {sequence}, {kind})"
    # A failure past the longest length that ran is the graph's own limit (ONNX Runtime's test
    # graphs keep an 8-position causal buffer); one within it, or no past probe run, is a problem.
    within = [why for total, why in failures if total <= longest]
    if within or not ran or (with_past and past is not None and not with_past_ran and failures):
        return (within or [why for _, why in failures] or ["the mask subgraph ran on no probe shape"])[0]
    return None
