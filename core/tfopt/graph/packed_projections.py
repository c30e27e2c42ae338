"""Projections that read the same input become one MatMul: Q/K/V, and gate/up of a gated MLP.

A Llama-family layer multiplies its normalized hidden state by the query, key and value
weights, and the MLP's input by the gate and up weights: five weight matrices, each a
separate MatMul (and, quantized, a separate MatMulNBits). Concatenating weights that share
an input along N makes one larger MatMul and a Split of its output: each output column is
the same dot product over K, the input is read once, and one kernel call replaces several
(measured in ``docs/benchmark-llama.md``; onnxruntime-genai's builder packs them too).

Run after the decoder-LLM fusions only (``fuse_model`` applies it where ``CachedAttention``
fired): encoders keep their three projections, which ``MultiHeadAttention`` reads directly.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from .values import constant_tensor, new_initializer, release_mapped, take_over

_MIN_SHARED = 2


def _weight(node: ir.Node) -> ir.TensorProtocol | None:
    """The constant 2-D float weight of ``MatMul(x, W)``, read by this MatMul only (its data is not read)."""
    if node.op_type != "MatMul" or node.domain != "" or len(node.inputs) != 2:
        return None
    weight = node.inputs[1]
    if weight is None or len(weight.uses()) != 1:
        return None
    tensor = constant_tensor(weight)
    if tensor is None or len(tensor.shape) != 2 or tensor.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        return None
    return tensor


def _concatenated(tensors: list[ir.TensorProtocol]) -> ir.LazyTensor:
    """The weights side by side along N, computed when the model is saved (or read), not now:
    packing a 5 GB model would otherwise hold a copy of most of its weights until then."""

    def compute() -> ir.Tensor:
        joined = np.concatenate([tensor.numpy() for tensor in tensors], axis=1)
        release_mapped(tensors)
        return ir.tensor(joined)

    width = sum(int(tensor.shape[1]) for tensor in tensors)
    return ir.LazyTensor(compute, dtype=tensors[0].dtype, shape=ir.Shape([int(tensors[0].shape[0]), width]))


def pack_shared_input_matmuls(graph: ir.Graph) -> int:
    """``MatMul(x, W1) ... MatMul(x, Wn)`` -> ``Split(MatMul(x, [W1 .. Wn]))``; returns how many MatMuls were merged away."""
    groups: dict[int, list[tuple[ir.Node, ir.TensorProtocol]]] = defaultdict(list)
    for node in graph:
        tensor = _weight(node)
        if tensor is not None and node.inputs[0] is not None:
            groups[id(node.inputs[0])].append((node, tensor))
    merged = 0
    for members in groups.values():
        by_kind: dict[tuple, list[tuple[ir.Node, ir.TensorProtocol]]] = defaultdict(list)
        for node, tensor in members:
            by_kind[(int(tensor.shape[0]), tensor.dtype)].append((node, tensor))
        for same in by_kind.values():
            if len(same) < _MIN_SHARED:
                continue
            merged += _pack(graph, same)
    return merged


def _pack(graph: ir.Graph, same: list[tuple[ir.Node, ir.TensorProtocol]]) -> int:
    nodes = [node for node, _ in same]
    first = min(nodes, key=lambda node: list(graph).index(node))  # the earliest keeps the graph in order
    x = first.inputs[0]
    widths = [int(tensor.shape[1]) for _, tensor in same]
    weight = new_initializer(graph, f"{nodes[0].inputs[1].name}_packed", _concatenated([tensor for _, tensor in same]))
    sizes = new_initializer(graph, f"{weight.name}_sizes", np.array(widths, dtype=np.int64))
    matmul = ir.node("MatMul", [x, weight], name=f"{first.name or 'matmul'}_packed")
    split = ir.node("Split", [matmul.outputs[0], sizes], attributes={"axis": -1}, num_outputs=len(nodes), name=f"{first.name or 'matmul'}_unpacked")
    graph.insert_before(first, [matmul, split])
    if x.shape is not None:
        matmul.outputs[0].shape = ir.Shape([*list(x.shape)[:-1], int(sum(widths))])
    matmul.outputs[0].dtype = x.dtype
    for node, part in zip(nodes, split.outputs):
        take_over(node.outputs[0], part)
    for node in nodes:
        graph.remove(node, safe=True)
    return len(nodes) - 1
