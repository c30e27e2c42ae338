"""Primitives a fused graph should not have left: counted from the graph, whatever the family claims.

An adapter's expected counts say what it believes it fused; these counts look at what is still
there. Each is a sub-graph one of the shared rules exists to replace, so a nonzero count is a
fusion that did not happen (unless the fusion was disabled):

- ``Softmax``: an attention pattern no rule matched.
- ``norm chain``: ReduceMean -> (Add eps) -> Sqrt, the unfused body of a LayerNorm or RMSNorm.
- ``gelu formula``: Erf (exact gelu) or a Tanh fed by the cubic term of the tanh approximation.
- ``rotate-half``: Concat(Neg(second half), first half), an unfused rotary embedding.

The walks look a few producers up and never follow more than one path, so counting is linear.
"""

from __future__ import annotations

import onnx_ir as ir

from .values import scalar

SOFTMAX = "Softmax"
NORM_CHAIN = "norm chain"
GELU_FORMULA = "gelu formula"
ROTATE_HALF = "rotate-half"
LEFTOVER_KINDS = (SOFTMAX, NORM_CHAIN, GELU_FORMULA, ROTATE_HALF)

# The user-facing fusions (tfopt.results.FUSION_NAMES) that replace each kind: disabling one allows the leftover.
FUSIONS_OF = {
    SOFTMAX: ("attention",), NORM_CHAIN: ("layer_norm",), GELU_FORMULA: ("gelu", "fast_gelu"), ROTATE_HALF: ("attention",),
}
WHAT_IT_MEANS = {
    SOFTMAX: "an attention pattern did not match",
    NORM_CHAIN: "a LayerNorm/RMSNorm did not fuse",
    GELU_FORMULA: "a gelu did not fuse",
    ROTATE_HALF: "a rotary embedding did not fuse",
}
_PASS_THROUGH = frozenset({"Cast", "Identity"})  # ops a chain may carry between its steps
_GELU_CUBIC = 0.044715  # tanh(sqrt(2/pi) * (x + 0.044715 x^3))


def _producer(value: ir.Value | None, skip: frozenset[str] = _PASS_THROUGH) -> ir.Node | None:
    node = value.producer() if value is not None else None
    while node is not None and node.op_type in skip and node.inputs and node.inputs[0] is not None:
        node = node.inputs[0].producer()
    return node


def _is_norm_chain(sqrt: ir.Node) -> bool:
    """Sqrt(ReduceMean(...) [+ eps]): the variance (or mean square) of a norm, square-rooted."""
    node = _producer(sqrt.inputs[0])
    if node is not None and node.op_type == "Add":
        return any((source := _producer(value)) is not None and source.op_type == "ReduceMean" for value in node.inputs)
    return node is not None and node.op_type == "ReduceMean"


def _has_cubic_term(tanh: ir.Node, depth: int = 6) -> bool:
    """Does the Tanh's input cone (a few steps up) hold Pow(x, 3) or a Mul by 0.044715?"""
    frontier = [tanh]
    for _ in range(depth):
        upstream = []
        for node in frontier:
            for value in node.inputs:
                producer = _producer(value)
                if producer is None:
                    continue
                constants = [scalar(v) for v in producer.inputs]
                if producer.op_type == "Pow" and any(c is not None and abs(c - 3.0) < 1e-6 for c in constants):
                    return True
                if producer.op_type == "Mul" and any(c is not None and abs(c - _GELU_CUBIC) < 1e-4 for c in constants):
                    return True
                upstream.append(producer)
        frontier = upstream
    return False


def _is_rotate_half(concat: ir.Node) -> bool:
    """Concat(Neg(a slice of x), another slice of x) along the last axis: rotate_half(x)."""
    if len(concat.inputs) != 2:
        return False
    first, second = (_producer(value) for value in concat.inputs)
    if first is None or second is None or first.op_type != "Neg":
        return False
    negated = _producer(first.inputs[0])
    return negated is not None and negated.op_type in ("Slice", "Split") and second.op_type in ("Slice", "Split")


def leftover_primitives(model: ir.Model) -> dict[str, int]:
    """How many of each :data:`LEFTOVER_KINDS` the graph (main graph only) still holds; zero kinds left out."""
    counts = dict.fromkeys(LEFTOVER_KINDS, 0)
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Softmax":
            counts[SOFTMAX] += 1
        elif node.op_type == "Sqrt" and _is_norm_chain(node):
            counts[NORM_CHAIN] += 1
        elif node.op_type == "Erf" or (node.op_type == "Tanh" and _has_cubic_term(node)):
            counts[GELU_FORMULA] += 1
        elif node.op_type == "Concat" and _is_rotate_half(node):
            counts[ROTATE_HALF] += 1
    return {kind: count for kind, count in counts.items() if count}


def leftover_lines(leftover: dict[str, int], disabled: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """One line per leftover kind whose fusion was not disabled: the run's fusion is incomplete."""
    return [
        f"{count} {kind} left unfused ({WHAT_IT_MEANS[kind]})"
        for kind, count in leftover.items()
        if not set(FUSIONS_OF[kind]) & set(disabled)
    ]
