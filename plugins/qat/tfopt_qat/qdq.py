"""Put the QAT-trained quantization into an ONNX graph as QuantizeLinear/DequantizeLinear pairs.

The same function serves the unfused export and the fused graph: it finds each encoder
Linear by its weight (a MatMul whose B initializer equals W^T of a QuantLinear) and gives it

    x -> QuantizeLinear(s_x, z_x: uint8) -> DequantizeLinear -> MatMul <- DequantizeLinear(axis=1) <- W_q (int8)

with W_q = clip(round(W^T / s_w), -127, 127) per output column, exactly what torch's fake
quantization computed in training. ONNX Runtime's QDQ transformer turns such a MatMul into
its integer kernels (MatMulIntegerToFloat: u8 x s8 with the float rescale folded in). This is
how the fused graph gets int8 matmuls: the shared fusion rules run on the float graph, where
they know the patterns, and the trained scales are inserted after.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_ir as ir

from tfopt.errors import TfoptError
from tfopt.graph.values import new_initializer

from .fakequant import WEIGHT_QMAX, WEIGHT_QMIN, LinearQuant


def _key(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes() + str(array.shape).encode()).hexdigest()


def quantize_weight(weight_t: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 per-column symmetric quantization, round half to even like torch."""
    return np.clip(np.rint(weight_t / scale[None, :]), WEIGHT_QMIN, WEIGHT_QMAX).astype(np.int8)


def insert_qdq(model: ir.Model, quants: list[LinearQuant], *, require_all: bool = True) -> int:
    """In place; returns how many MatMuls were quantized. Unmatched Linears are an error when ``require_all``."""
    graph = model.graph
    by_weight = {_key(q.weight_t): q for q in quants}
    done: set[str] = set()
    dequantized: dict[tuple, ir.Value] = {}
    count = 0
    for node in list(graph):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        x, weight = node.inputs
        if weight is None or weight.const_value is None or not weight.is_initializer():
            continue
        array = weight.const_value.numpy()
        if array.dtype != np.float32 or array.ndim != 2:
            continue
        quant = by_weight.get(_key(array))
        if quant is None:
            continue
        prefix = quant.name
        scale_x = np.array(quant.input_scale, dtype=np.float32)
        zero_x = np.array(quant.input_zero_point, dtype=np.uint8)
        key = (id(x), float(scale_x), int(zero_x))
        new_nodes = []
        if key not in dequantized:
            s = new_initializer(graph, f"{prefix}.input_scale", scale_x)
            z = new_initializer(graph, f"{prefix}.input_zero_point", zero_x)
            q = ir.node("QuantizeLinear", [x, s, z], name=f"{prefix}/input_quantize")
            dq = ir.node("DequantizeLinear", [q.outputs[0], s, z], name=f"{prefix}/input_dequantize")
            q.outputs[0].name, dq.outputs[0].name = f"{prefix}.input_q", f"{prefix}.input_dq"
            new_nodes += [q, dq]
            dequantized[key] = dq.outputs[0]
        w_q = new_initializer(graph, f"{prefix}.weight_int8", quantize_weight(quant.weight_t, quant.weight_scale))
        w_s = new_initializer(graph, f"{prefix}.weight_scale", quant.weight_scale.astype(np.float32))
        w_z = new_initializer(graph, f"{prefix}.weight_zero_point", np.zeros(quant.weight_scale.shape, dtype=np.int8))
        w_dq = ir.node("DequantizeLinear", [w_q, w_s, w_z], attributes={"axis": 1}, name=f"{prefix}/weight_dequantize")
        w_dq.outputs[0].name = f"{prefix}.weight_dq"
        new_nodes.append(w_dq)
        graph.insert_before(node, new_nodes)
        node.replace_input_with(0, dequantized[key])
        node.replace_input_with(1, w_dq.outputs[0])
        done.add(quant.name)
        count += 1
    for name, value in list(graph.initializers.items()):  # float weights nobody reads any more
        if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
            del graph.initializers[name]
    missing = [q.name for q in quants if q.name not in done]
    if require_all and missing:
        raise TfoptError(f"{len(missing)} quantized Linear(s) not found as MatMul in the graph (first: {missing[0]})")
    return count
