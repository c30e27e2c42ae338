"""Weight-only MatMulNBits, one weight at a time: a 5 GB model is quantized without holding it in memory.

ONNX Runtime's own quantizer (``MatMulNBitsQuantizer``) loads every weight of the model into a
protobuf and writes the quantized copies beside them: converting Llama-3.2-1B's fp32 weights
(4.9 GB) to int4 peaked at 9.3 GB here. This module rewrites the in-memory ``ir.Model``
instead: each ``MatMul(x, W)`` with a constant 2-D fp32 ``W`` becomes
``MatMulNBits(x, W_Q, W_scales, W_zero_points)`` whose three tensors are ``ir.LazyTensor``s,
computed from ``W`` when the model is written and dropped once written; ``W`` itself is read
from the input's data file then and unmapped again (:func:`tfopt.graph.values.release_mapped`).

Round-to-nearest calls the block quantizer ONNX Runtime's quantizer calls (its C++ kernel), so
the bytes are the ones that quantizer writes, under the same names, attributes and node names;
a ``rounding`` callable may give other codes in the same layout (GPTQ: :mod:`tfopt.gptq`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

from .graph.values import MS_DOMAIN, new_initializer, release_mapped

# (weight name, fp32 (K, N) array) -> (B (N, blocks, blob) uint8, scales (N, blocks) fp32, zero points (N, packed) uint8)
Rounding = Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def layout(k: int, n: int, bits: int, block_size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Shapes of MatMulNBits' B, scales and zero points for a (K, N) weight."""
    per_byte = 8 // bits
    blocks = -(-k // block_size)
    return (n, blocks, block_size // per_byte), (n, blocks), (n, -(-blocks // per_byte))


def nearest(weight: np.ndarray, bits: int, block_size: int, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest blocks by ONNX Runtime's own kernel (what its MatMulNBits quantizer writes)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    k, n = weight.shape
    b_shape, scales_shape, zeros_shape = layout(k, n, bits, block_size)
    packed = np.zeros(b_shape, np.uint8)
    scales = np.zeros(scales_shape, np.float32)
    zeros = np.zeros(zeros_shape, np.uint8)
    padded = np.pad(weight, ((0, b_shape[1] * block_size - k), (0, 0))) if b_shape[1] * block_size != k else weight
    kernel = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    kernel(packed, np.ascontiguousarray(padded, dtype=np.float32), scales, zeros, block_size, n, k, symmetric)
    return packed, scales, zeros


class _Parts:
    """One weight's quantized tensors, computed when the first is read and forgotten once each was read."""

    def __init__(self, name: str, source: ir.TensorProtocol, quantize: Rounding):
        self.name, self.source, self.quantize = name, source, quantize
        self._parts: tuple[np.ndarray, ...] | None = None
        self._unread: set[int] = set()

    def part(self, index: int, count: int) -> ir.Tensor:
        if self._parts is None:
            self._parts = self.quantize(self.name, self.source.numpy())
            release_mapped([self.source])
            self._unread = set(range(count))
        part = self._parts[index]
        self._unread.discard(index)
        if not self._unread:
            self._parts = None
        return ir.tensor(part)


def _quantizable(node: ir.Node) -> ir.Value | None:
    """The constant 2-D fp32 weight initializer of a standard ``MatMul(x, W)``, else None."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2 or node.inputs[0] is None:
        return None
    weight = node.inputs[1]
    if weight is None or not weight.is_initializer() or weight.const_value is None:
        return None
    tensor = weight.const_value
    return weight if tensor.dtype == ir.DataType.FLOAT and len(tensor.shape) == 2 else None


def quantize_matmuls(
    model: ir.Model,
    *,
    bits: int,
    block_size: int,
    accuracy_level: int,
    symmetric: bool = False,
    rounding: Rounding | None = None,
    include: Callable[[ir.Node], bool] = lambda node: True,
) -> int:
    """Replace every quantizable MatMul that ``include`` accepts by MatMulNBits, in place; returns how many.

    A weight read by several MatMuls is quantized once and shared. ``rounding`` (default: nearest,
    by ONNX Runtime's kernel) gives the codes. Nothing is computed until the tensors are read.
    """
    if bits not in (4, 8):
        raise ValueError(f"MatMulNBits with {bits} bits is not written by tfopt")
    graph = model.graph
    quantize = rounding or (lambda _name, array: nearest(array, bits, block_size, symmetric))
    quantized: dict[str, list[ir.Value]] = {}
    replaced = 0
    for node in list(graph):
        weight = _quantizable(node)
        if weight is None or not include(node):
            continue
        k, n = (int(d) for d in weight.const_value.shape)
        if weight.name not in quantized:
            quantized[weight.name] = _lazy_initializers(graph, weight, bits, block_size, symmetric, quantize)
        attributes = {"K": k, "N": n, "bits": bits, "block_size": block_size}
        if accuracy_level:
            attributes["accuracy_level"] = accuracy_level
        replacement = ir.node(
            "MatMulNBits", [node.inputs[0], *quantized[weight.name]], attributes=attributes, domain=MS_DOMAIN,
            name=f"{node.name}_Q{bits}" if node.name else None,
        )
        ir.convenience.replace_nodes_and_values(graph, node, [node], [replacement], [node.outputs[0]], [replacement.outputs[0]])
        if not weight.uses() and not weight.is_graph_output():
            graph.initializers.pop(weight.name)
        replaced += 1
    if replaced:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    return replaced


def _lazy_initializers(graph: ir.Graph, weight: ir.Value, bits: int, block_size: int, symmetric: bool, quantize: Rounding) -> list[ir.Value]:
    k, n = (int(d) for d in weight.const_value.shape)
    shapes = layout(k, n, bits, block_size)
    names = [f"{weight.name}_Q{bits}", f"{weight.name}_scales", f"{weight.name}_zero_points"]
    dtypes = [ir.DataType.UINT8, ir.DataType.FLOAT, ir.DataType.UINT8]
    count = 2 if symmetric else 3
    parts = _Parts(weight.name, weight.const_value, quantize)
    return [
        new_initializer(graph, names[index],
                        ir.LazyTensor(lambda index=index: parts.part(index, count), dtype=dtypes[index], shape=ir.Shape(shapes[index])))
        for index in range(count)
    ]
