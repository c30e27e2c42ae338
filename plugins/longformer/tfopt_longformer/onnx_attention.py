"""The ``LongformerAttention`` node in ONNX: a body in standard ops (CPU target) or ONNX Runtime's contrib op (CUDA).

The export writes one ``tfopt.longformer::LongformerAttention`` node per layer (inputs and
attributes exactly those of ``com.microsoft::LongformerAttention``) and :func:`add_function`
gives the model a local function of that name, so ONNX Runtime's CPU provider runs it (it
inlines model-local functions) and the model validates like any other.

The body is the sliding-chunks form: the sequence is padded inside the graph to a multiple of
the window w, queries are taken in chunks of w, each chunk against the 3w keys around it
(one MatMul over all chunks), a static band mask keeps the 2w+1 keys of each query's window;
global tokens are gathered with TopK (K = the batch's largest count of global tokens, a tensor,
so it stays dynamic). Memory is O(S * 3w + S * G): linear in the sequence length.

:func:`to_contrib` rewrites the nodes into ``com.microsoft::LongformerAttention`` for the CUDA
provider: ONNX Runtime has no CPU kernel for it, and its kernel needs S % 2w == 0, so each node
gets a Pad before and a Slice after.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .modeling import DOMAIN, OP_TYPE

MS_DOMAIN = "com.microsoft"
INPUTS = ["input", "weight", "bias", "mask", "global_weight", "global_bias", "global"]
LOWEST = -65504.0  # stands in for -inf in the softmax; representable in fp16 too


class _Body:
    """Appends nodes with unique output names; ``op`` returns the output name(s)."""

    def __init__(self, prefix: str = "t"):
        self.nodes: list[onnx.NodeProto] = []
        self.prefix = prefix
        self.count = 0

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs):
        names = [f"{self.prefix}{self.count}_{i}" for i in range(outputs)]
        self.count += 1
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def ints(self, *values: int) -> str:
        return self.op("Constant", value=helper.make_tensor("v", TensorProto.INT64, [len(values)], list(values)))

    def attr_int(self, name: str) -> str:
        """A 1-D int64 tensor holding the function's int attribute ``name``."""
        attr = onnx.AttributeProto()
        attr.name, attr.ref_attr_name, attr.type = "value_int", name, onnx.AttributeProto.INT
        node = helper.make_node("Constant", [], [f"{self.prefix}{self.count}_0"])
        node.attribute.append(attr)
        self.count += 1
        self.nodes.append(node)
        return self.op("Unsqueeze", node.output[0], self.ints(0))

    def like(self, value: float, ref: str) -> str:
        return self.op("CastLike", self.op("Constant", value_float=value), ref)


def function_proto(opset: int) -> onnx.FunctionProto:
    """``tfopt.longformer::LongformerAttention`` in standard ops (attributes num_heads, window)."""
    b = _Body()
    x, weight, bias, mask, gweight, gbias, glob = INPUTS
    zero, one = b.ints(0), b.ints(1)
    shape = b.op("Shape", x)
    B = b.op("Slice", shape, zero, one)
    S = b.op("Slice", shape, one, b.ints(2))
    E = b.op("Slice", shape, b.ints(2), b.ints(3))
    H = b.attr_int("num_heads")
    w = b.attr_int("window")
    D = b.op("Div", E, H)
    scale = b.op("Reciprocal", b.op("Sqrt", b.op("CastLike", D, x)))

    def heads(t: str, length: str) -> str:  # (B, L, E) -> (B, H, L, D)
        return b.op("Transpose", b.op("Reshape", t, b.op("Concat", B, length, H, D, axis=0)), perm=[0, 2, 1, 3])

    q, k, v = b.op("Split", b.op("Add", b.op("MatMul", x, weight), bias), axis=2, num_outputs=3, outputs=3)
    qh, kh, vh = heads(b.op("Mul", q, scale), S), heads(k, S), heads(v, S)
    padded = b.op("Less", mask, b.like(0.0, mask))  # (B, S)
    is_global = b.op("And", b.op("Cast", glob, to=TensorProto.BOOL), b.op("Not", padded))
    key_ok = b.op("Not", b.op("Or", padded, is_global))
    # sequence padded to nc * w; keys/values also by w on both sides: L = (nc + 2) * w
    nc = b.op("Div", b.op("Sub", b.op("Add", S, w), one), w)
    Sp = b.op("Mul", nc, w)
    extra = b.op("Sub", Sp, S)
    zeros2 = b.ints(0, 0)
    q5 = b.op("Reshape", b.op("Pad", qh, b.op("Concat", zeros2, zero, zero, zeros2, extra, zero, axis=0)),
              b.op("Concat", B, H, nc, w, D, axis=0))
    nc2 = b.op("Add", nc, b.ints(2))

    def windows(t: str) -> str:  # (B, H, S, D) -> (B, H, nc, 3w, D)
        pads = b.op("Concat", zeros2, w, zero, zeros2, b.op("Add", extra, w), zero, axis=0)
        chunks = b.op("Reshape", b.op("Pad", t, pads), b.op("Concat", B, H, nc2, w, D, axis=0))
        axis = b.ints(2)
        parts = [b.op("Slice", chunks, b.ints(s), b.op("Add", nc, b.ints(s)), axis) for s in (0, 1, 2)]
        return b.op("Concat", *parts, axis=3)

    kwin, vwin = windows(kh), windows(vh)
    scores = b.op("MatMul", q5, b.op("Transpose", kwin, perm=[0, 1, 2, 4, 3]))  # (B, H, nc, w, 3w)
    # band: key t of a chunk's 3w is in query r's window iff r <= t <= r + 2w
    w3 = b.op("Mul", w, b.ints(3))
    scalar = lambda t: b.op("Squeeze", t, zero)  # noqa: E731
    r = b.op("Unsqueeze", b.op("Range", scalar(zero), scalar(w), scalar(one)), one)
    t = b.op("Unsqueeze", b.op("Range", scalar(zero), scalar(w3), scalar(one)), zero)
    band = b.op("And", b.op("GreaterOrEqual", t, r), b.op("LessOrEqual", t, b.op("Add", r, b.op("Mul", w, b.ints(2)))))
    ok = b.op("Pad", b.op("Cast", key_ok, to=TensorProto.FLOAT), b.op("Concat", zero, w, zero, b.op("Add", extra, w), axis=0))
    ok = b.op("Reshape", ok, b.op("Concat", B, nc2, w, axis=0))
    ok_parts = [b.op("Slice", ok, b.ints(s), b.op("Add", nc, b.ints(s)), one) for s in (0, 1, 2)]
    ok_win = b.op("Greater", b.op("Concat", *ok_parts, axis=2), b.op("Constant", value_float=0.5))  # (B, nc, 3w)
    allowed = b.op("And", b.op("Unsqueeze", band, b.ints(0, 1)), b.op("Unsqueeze", ok_win, b.ints(2)))
    lowest = b.like(LOWEST, x)
    scores = b.op("Where", b.op("Unsqueeze", allowed, one), scores, lowest)
    # global tokens: the G = max count positions of each row (filler slots marked invalid)
    count = b.op("ReduceMax", b.op("ReduceSum", b.op("Cast", is_global, to=TensorProto.INT64), one, keepdims=0), keepdims=1)
    G = b.op("Max", count, one)
    flags = b.op("Cast", is_global, to=TensorProto.FLOAT)
    gflag, gidx = b.op("TopK", flags, G, axis=1, largest=1, sorted=1, outputs=2)  # (B, G)
    gvalid = b.op("Greater", gflag, b.op("Constant", value_float=0.5))
    index4 = b.op("Expand", b.op("Unsqueeze", gidx, b.ints(1, 3)), b.op("Concat", B, H, G, D, axis=0))
    kg = b.op("GatherElements", kh, index4, axis=2)
    vg = b.op("GatherElements", vh, index4, axis=2)
    q4 = b.op("Reshape", q5, b.op("Concat", B, H, Sp, D, axis=0))
    gs = b.op("Reshape", b.op("MatMul", q4, b.op("Transpose", kg, perm=[0, 1, 3, 2])), b.op("Concat", B, H, nc, w, G, axis=0))
    gs = b.op("Where", b.op("Unsqueeze", gvalid, b.ints(1, 2, 3)), gs, lowest)
    probs = b.op("Softmax", b.op("Concat", gs, scores, axis=-1), axis=-1)
    pg, pl = b.op("Split", probs, b.op("Concat", G, w3, axis=0), axis=-1, outputs=2)
    out = b.op("Add", b.op("MatMul", pl, vwin),
               b.op("Reshape", b.op("MatMul", b.op("Reshape", pg, b.op("Concat", B, H, Sp, G, axis=0)), vg),
                    b.op("Concat", B, H, nc, w, D, axis=0)))
    out = b.op("Slice", b.op("Reshape", out, b.op("Concat", B, H, Sp, D, axis=0)), zero, S, b.ints(2))
    out = b.op("Where", b.op("Unsqueeze", padded, b.ints(1, 3)), b.like(0.0, x), out)  # padding -> 0, as HF
    local = b.op("Reshape", b.op("Transpose", out, perm=[0, 2, 1, 3]), b.op("Concat", B, S, E, axis=0))
    # global queries: every unpadded token, with the global projections
    gq_w, gk_w, gv_w = b.op("Split", gweight, axis=1, num_outputs=3, outputs=3)
    gq_b, gk_b, gv_b = b.op("Split", gbias, axis=0, num_outputs=3, outputs=3)
    index3 = b.op("Expand", b.op("Unsqueeze", gidx, b.ints(2)), b.op("Concat", B, G, E, axis=0))
    hg = b.op("GatherElements", x, index3, axis=1)  # (B, G, E)
    gq = heads(b.op("Mul", b.op("Add", b.op("MatMul", hg, gq_w), gq_b), scale), G)
    gk = heads(b.op("Add", b.op("MatMul", x, gk_w), gk_b), S)
    gv = heads(b.op("Add", b.op("MatMul", x, gv_w), gv_b), S)
    gsc = b.op("MatMul", gq, b.op("Transpose", gk, perm=[0, 1, 3, 2]))  # (B, H, G, S)
    gsc = b.op("Where", b.op("Unsqueeze", padded, b.ints(1, 2)), lowest, gsc)
    gout = b.op("MatMul", b.op("Softmax", gsc, axis=-1), gv)
    gout = b.op("Reshape", b.op("Transpose", gout, perm=[0, 2, 1, 3]), b.op("Concat", B, G, E, axis=0))
    scattered = b.op("ScatterElements", local, index3, gout, axis=1)
    b.nodes.append(helper.make_node("Where", [b.op("Unsqueeze", is_global, b.ints(2)), scattered, local], ["output"]))
    return helper.make_function(
        DOMAIN, OP_TYPE, INPUTS, ["output"], b.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["num_heads", "window"],
    )


def add_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give ``model`` the local function that defines its ``tfopt.longformer`` nodes (in place)."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    del model.functions[:]
    model.functions.append(function_proto(opset))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model


def _nodes(graph: onnx.GraphProto, domain: str) -> list[int]:
    return [i for i, n in enumerate(graph.node) if n.domain == domain and n.op_type == OP_TYPE]


def _set_imports(model: onnx.ModelProto, add: str, drop: str) -> None:
    kept = [o for o in model.opset_import if o.domain != drop]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    if not any(o.domain == add for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(add, 1))


def to_contrib(model: onnx.ModelProto) -> int:
    """Rewrite every ``tfopt.longformer`` node into ``com.microsoft::LongformerAttention`` (in place).

    ONNX Runtime's kernel wants S % 2w == 0: the node's input, mask (with -10000) and global
    flags (with 0) are padded to that before it, and its output sliced back after it.
    Returns the number of nodes rewritten.
    """
    graph = model.graph
    rebuilt: list[onnx.NodeProto] = []
    count = 0
    for n, node in enumerate(graph.node):
        if not (node.domain == DOMAIN and node.op_type == OP_TYPE):
            rebuilt.append(node)
            continue
        count += 1
        b = _Body(prefix=f"longformer_pad{n}_")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, weight, bias, mask, gweight, gbias, glob = node.input
        two_w = b.ints(2 * int(attrs["window"]))
        S = b.op("Slice", b.op("Shape", x), b.ints(1), b.ints(2))
        pad = b.op("Mod", b.op("Sub", two_w, b.op("Mod", S, two_w)), two_w)
        zero = b.ints(0)
        x_p = b.op("Pad", x, b.op("Concat", zero, zero, zero, zero, pad, zero, axis=0))
        pads2 = b.op("Concat", zero, zero, zero, pad, axis=0)
        mask_p = b.op("Pad", mask, pads2, b.op("CastLike", b.op("Constant", value_float=-10000.0), mask))
        glob_p = b.op("Pad", glob, pads2, b.op("Constant", value=helper.make_tensor("z", TensorProto.INT32, [], [0])))
        out_p = f"longformer_pad{n}_out"
        b.nodes.append(helper.make_node(
            OP_TYPE, [x_p, weight, bias, mask_p, gweight, gbias, glob_p], [out_p], name=node.name or f"LongformerAttention_{n}",
            domain=MS_DOMAIN, num_heads=int(attrs["num_heads"]), window=int(attrs["window"]),
        ))
        b.nodes.append(helper.make_node("Slice", [out_p, zero, S, b.ints(1)], [node.output[0]]))
        rebuilt.extend(b.nodes)
    del graph.node[:]
    graph.node.extend(rebuilt)
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend(kept)
    _set_imports(model, MS_DOMAIN, DOMAIN)
    return count


def to_function(model: onnx.ModelProto) -> int:
    """The inverse stand-in: ``com.microsoft::LongformerAttention`` nodes computed by the standard-op body.

    For checking a CUDA-target model on the CPU (ONNX Runtime has no CPU kernel for the
    contrib op): the graph around the nodes, the packed weights and attributes all run as
    written; only the node's kernel is replaced by this module's body (checked against HF).
    """
    count = 0
    for i in _nodes(model.graph, MS_DOMAIN):
        model.graph.node[i].domain = DOMAIN
        count += 1
    add_function(model)
    _set_imports(model, DOMAIN, MS_DOMAIN)
    return count


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type per value name: as recorded in the graph, then through Pad (the inputs to_contrib pads)."""
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:  # topological order: a Pad's input is typed before its output is needed
        if node.op_type == "Pad" and node.domain in ("", "ai.onnx") and node.input[0] in types:
            types.setdefault(node.output[0], types[node.input[0]])
    return types


def schema_problems(model: onnx.ModelProto) -> list[str]:
    """Every way a ``com.microsoft::LongformerAttention`` node departs from ONNX Runtime's schema.

    Names, order and types of inputs/outputs and the required attributes come from the
    schema of the installed onnxruntime (``get_all_operator_schema``); the weight layout
    (E, 3E) / (3E,) and the (B, S) masks from its kernel's input checks.
    """
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    schema = next(s for s in ort_c.get_all_operator_schema() if s.name == OP_TYPE and s.domain == MS_DOMAIN)
    allowed = {t.type_param_str: set(t.allowed_type_strs) for t in schema.type_constraints}
    inits = {t.name: t for t in model.graph.initializer}
    types = _element_types(model)
    problems = []
    indices = _nodes(model.graph, MS_DOMAIN)
    if not indices:
        return ["no com.microsoft::LongformerAttention node"]
    for i in indices:
        node = model.graph.node[i]
        where = f"node {node.name!r}"
        if len(node.input) != len(schema.inputs) or len(node.output) != len(schema.outputs):
            problems.append(f"{where}: {len(node.input)} inputs / {len(node.output)} outputs, schema has {len(schema.inputs)} / {len(schema.outputs)}")
            continue
        attrs = {a.name: a for a in node.attribute}
        for name, attr in schema.attributes.items():
            if attr.required and (name not in attrs or attrs[name].type != onnx.AttributeProto.INT):
                problems.append(f"{where}: required int attribute {name!r} missing")
        extra = set(attrs) - set(schema.attributes)
        if extra:
            problems.append(f"{where}: attributes {sorted(extra)} not in the schema")
        bound: dict[str, int] = {}
        for formal, actual in zip(schema.inputs, node.input):
            elem = types.get(actual)
            if elem is None:
                problems.append(f"{where}: the type of input {formal.name} ({actual!r}) cannot be inferred")
                continue
            name = f"tensor({helper.tensor_dtype_to_string(elem).split('.')[-1].lower()})"
            if name not in allowed[formal.typeStr]:
                problems.append(f"{where}: input {formal.name} is {name}, schema allows {sorted(allowed[formal.typeStr])}")
            if bound.setdefault(formal.typeStr, elem) != elem:
                problems.append(f"{where}: input {formal.name} breaks the type binding of {formal.typeStr}")
        weight, bias, gweight, gbias = (inits.get(node.input[k]) for k in (1, 2, 4, 5))
        if None in (weight, bias, gweight, gbias):
            problems.append(f"{where}: weights and biases must be initializers")
            continue
        hidden = weight.dims[0]
        for tensor, want in ((weight, [hidden, 3 * hidden]), (gweight, [hidden, 3 * hidden]), (bias, [3 * hidden]), (gbias, [3 * hidden])):
            if list(tensor.dims) != want:
                problems.append(f"{where}: {tensor.name} has shape {list(tensor.dims)}, the kernel wants {want}")
        heads = helper.get_attribute_value(attrs["num_heads"]) if "num_heads" in attrs else 0
        if heads <= 0 or hidden % heads:
            problems.append(f"{where}: num_heads={heads} does not divide the hidden size {hidden}")
        if "window" in attrs and helper.get_attribute_value(attrs["window"]) <= 0:
            problems.append(f"{where}: window must be positive")
    return problems
