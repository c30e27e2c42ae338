"""fp16 and int8 versions of a fused model, written atomically beside it.

fp16 uses ONNX Runtime's own converter (it knows which contrib-op inputs must stay
fp32, e.g. masks and ids) with inputs and outputs kept fp32, so callers feed the same
arrays. int8 is ONNX Runtime's dynamic quantization: int8 weights, activations
quantized on the fly, for MatMul and the packed Attention op. int4 is weight-only:
ONNX Runtime's block-wise MatMulNBits (4-bit weights, one fp32 scale and a 4-bit zero
point per block of :data:`INT4_BLOCK_SIZE` along K; ``accuracy_level`` 4 lets its CPU kernel
quantize activations to int8 (blocks of K) and use integer dot products).

Both integer precisions also quantize the LM head (a MatMul computing a model output)
unless ``lm_head="fp32"`` (kept) or ``"int8"`` (8-bit weight-only under int4). GPT-2 ties its head to the embedding table: the export reads it
as MatMul(x, Transpose(table)), which no quantizer touches (its weight is not a constant),
so :func:`untie_transposed_weights` gives that MatMul its own transposed copy first. At
GPT-2 small's shape the head is 154 MB of the 494 MB a decode step reads.

int8 has two methods (``int8_method``): "dynamic" (the default; int8 activations per
tensor, MatMulInteger) and "weight_only" (MatMulNBits with 8 bits, blocks like int4's,
activations quantized per block inside the kernel). On a trained decoder weight-only
agrees better with fp32 (docs/benchmark-gpt2.md), so the gpt2 adapter picks it.

Weight-only MatMulNBits is written by :mod:`tfopt.matmul_nbits`, one weight at a time while
the output is written: rounded to nearest by the kernel ONNX Runtime's quantizer calls (the
same bytes), or, given ``calibration`` feeds, by GPTQ (:mod:`tfopt.gptq`): same file format
and speed, less change in the model's outputs.

On the CPU: fp16 is a GPU format. ONNX Runtime 1.32 does run the fp16 contrib ops
this project emits on its CPU provider (measured: EmbedLayerNormalization, Attention,
MultiHeadAttention, SkipLayerNormalization, BiasGelu), but slower than fp32 and not
every contrib op has an fp16 CPU kernel in every version; when ONNX Runtime cannot
load the model, verification says so in one line instead of producing numbers.

Real-size models keep their weights as external data (``exported.onnx.data``), and may be
larger than protobuf's 2 GB message limit. Neither conversion ever serializes a whole
model with its weights: fp16 infers types on a weightless stand-in and converts a proto
whose weights it read from the input's folder; dynamic int8 hands ONNX Runtime a staged copy
with external data (its quantizer then takes the path-based route); weight-only int8/int4
never hold more than one weight (Llama-3.2-1B's 4.9 GB of fp32 weights to int4: 0.5x their
size at peak, ONNX Runtime's quantizer 1.9x; ``scripts/benchmark_llama_memory.py``). The outputs' weights go to
``<output name>.data`` beside the output when the input had external data or they are
large; the input's files are only read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import onnx
import onnx_ir as ir

from .errors import TfoptError, first_line
from .graph import io as graph_io
from .graph.input_checks import sort_nodes
from .graph.values import new_initializer
from . import matmul_nbits
from .graph.io import load_model, save_model, uses_external_data, write_file
from .gptq import Calibration
from .results import PRECISIONS, PrecisionResult

# What int8/int4 do with the LM head (``lm_head=``): the model's precision, int8 weight-only, or fp32.
LM_HEAD_PRECISIONS = ("quantized", "int8", "fp32")
INT8_METHODS = ("dynamic", "weight_only")
INT4_BLOCK_SIZE = 32  # MatMulNBits block along K: 128 is faster but loses 2-3 points of top-1 (docs/benchmark-gpt2.md)
# Asymmetric (zero point per block): top-1 92.7% vs 91.4% symmetric on stdlib-gpt2, same speed (docs/benchmark-gpt2.md).
INT4_SYMMETRIC = False
INT4_ACCURACY_LEVEL = 4  # int8 activations in MatMulNBits' CPU kernel; 0 = fp32 compute (same quality, slower here)

# Kept in fp32 on top of ONNX Runtime's default block list, because their own fp16 result
# overflows 65504: the square of a LayerNorm that was not fused ((x - mean)^2 passes it once
# activations pass ~256, and BERT's outlier channels do) and Exp past ~11 (a decomposed
# softmax or tanh). The converter casts around each blocked op; :func:`keep_chains_fp32`
# then lets consecutive blocked ops (Pow -> ReduceMean) pass fp32 values straight through,
# so a variance is only rounded to fp16 once it is an average. Fused models rarely contain
# these ops at all: LayerNormalization/SkipLayerNormalization accumulate in fp32 themselves.
NAN_PRONE_OPS = ("Pow", "ReduceMean", "ReduceSum", "Sqrt", "Reciprocal", "Exp")

INT8_OP_TYPES = ("MatMul", "Attention")
_LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten")
_HEAD_OPS = ("MatMul", "Gemm")


def fp16_block_list() -> list[str]:
    """Op types left in fp32 by :func:`to_fp16`."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(NAN_PRONE_OPS))


def convert_proto_to_fp16(
    model: onnx.ModelProto,
    *,
    base_dir: str | Path | None = None,
    keep_io_types: bool = True,
    op_block_list=None,
    **converter_options,
) -> onnx.ModelProto:
    """fp16 weights and compute, except the ops in the block list; same fp32 IO by default.

    ``model`` is converted in place and returned (a copy of a 2 GB model would cost 2 GB
    more). Weights it holds as external-data references are read from ``base_dir``, the
    folder of the file they came from. ``converter_options`` go to ONNX Runtime's converter
    as they are (``node_block_list``, ``force_fp16_initializers``, ``min_positive_val``,
    ``max_finite_val``).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    block = fp16_block_list() if op_block_list is None else list(op_block_list)
    name_unnamed_nodes(model.graph)
    add_inferred_types(model)
    load_external_weights(model, base_dir)  # the converter rewrites weight bytes in memory
    converter_options.setdefault("disable_shape_infer", True)  # done above, without the weights
    converter_options.setdefault("node_block_list", output_producers(model.graph))
    try:
        converted = convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=block, **converter_options)
        keep_chains_fp32(converted.graph)
        sort_nodes(converted.graph)  # the converter appends its Casts (graph inputs, blocked ops) after their consumers
        return converted
    except Exception as exc:
        raise TfoptError(f"fp16 conversion failed ({first_line(exc)})") from None


def load_external_weights(model: onnx.ModelProto, base_dir: str | Path | None) -> None:
    """Read every external-data tensor of ``model`` into memory from ``base_dir``.

    ONNX Runtime's converter marks an external tensor fp16 without converting its bytes
    (a corrupt model), or fails reading it relative to the working directory.
    """
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external and base_dir is None:
        raise TfoptError(f"tensor {external[0]!r} is stored as external data, but the model's folder is not known")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(base_dir or "."))
    except Exception as exc:
        raise TfoptError(f"cannot read the model's external data in {base_dir} ({first_line(exc)})") from None


def output_producers(graph: onnx.GraphProto) -> list[str]:
    """Names of the output heads (MatMul/Gemm computing a model output): they stay fp32.

    For GPT-2 that is the LM head, whose logits over a 50k vocabulary are the classic
    fp16 overflow (the known NaN problem). Other output producers (attention ops that
    also emit ``present`` state) are left to the block list: blocking a node that feeds
    fp16 work would need casts the converter does not insert.
    """
    outputs = {value.name for value in graph.output}
    producers = [node for node in graph.node if outputs.intersection(node.output) and node.op_type in _HEAD_OPS]
    # Their layout-only inputs (GPT-2's Reshape before the LM head) go with them: ONNX Runtime's
    # converter leaves such an edge fp16 without a Cast, and the model then fails to load.
    made_by = {output: node for node in graph.node for output in node.output}
    layout = [
        made_by[name]
        for node in producers
        for name in node.input
        if name in made_by and made_by[name].op_type in _LAYOUT_OPS
    ]
    return list(dict.fromkeys(node.name for node in producers + layout))


def _cast_target(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
        return None
    return next((attr.i for attr in node.attribute if attr.name == "to"), None)


def keep_chains_fp32(graph: onnx.GraphProto) -> int:
    """Cast(fp16 -> fp32) of Cast(fp32 -> fp16) of an fp32 value ``v``: read ``v`` directly.

    The converter rounds every blocked op's output to fp16 and back before the next
    blocked op; skipping the round trip keeps the chain in fp32. Casts left unused are
    removed. Returns how many round trips were skipped.
    """
    float_type, half_type = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    types = {
        info.name: info.type.tensor_type.elem_type
        for info in [*graph.input, *graph.value_info, *graph.output]
    }
    types.update({init.name: init.data_type for init in graph.initializer})
    producers = {output: node for node in graph.node for output in node.output}
    graph_outputs = {output.name for output in graph.output}
    skipped = 0
    for node in graph.node:
        if _cast_target(node) != float_type:
            continue
        down = producers.get(node.input[0])
        if down is None or _cast_target(down) != half_type or types.get(down.input[0]) != float_type:
            continue
        fp32_value, round_tripped = down.input[0], node.output[0]
        for consumer in graph.node:
            for index, name in enumerate(consumer.input):
                if name == round_tripped:
                    consumer.input[index] = fp32_value
        if round_tripped in graph_outputs:  # e.g. GPT-2's logits: the output keeps its name, and fp32
            node.op_type = "Identity"
            node.input[0] = fp32_value
            del node.attribute[:]
        skipped += 1
    while True:  # drop casts nobody reads any more (a removed Cast can orphan the one before it)
        used = {name for node in graph.node for name in node.input} | graph_outputs
        dead = [node for node in graph.node if _cast_target(node) is not None and node.output[0] not in used]
        if not dead:
            return skipped
        gone = {node.output[0] for node in dead}
        for node in dead:
            graph.node.remove(node)
        for info in [info for info in graph.value_info if info.name in gone]:
            graph.value_info.remove(info)


# Initializers up to this size keep their values during type inference (shape constants:
# Reshape targets type better with them); bigger ones are shape-only stand-ins.
_STAND_IN_MIN_BYTES = 1024


def add_inferred_types(model: onnx.ModelProto) -> None:
    """Give ``model`` value_info for every tensor ONNX can type, in place.

    The converter keeps a blocked op in fp32 by casting around it, which it can only do
    for tensors whose type it knows: without value_info the block list silently does
    nothing. Inference runs on :func:`weightless_copy`, so a model over protobuf's 2 GB
    limit is typed like a small one.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless_copy(model))
    except Exception:  # contrib ops onnx does not know stay untyped; the rest still converts
        return
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)


def weightless_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without its weight bytes: each large initializer becomes an external-data
    stand-in of the same name, type and shape (which shape inference never reads)."""
    copy = onnx.ModelProto()
    _copy_fields(model, copy, skip={"graph"})
    _copy_fields(model.graph, copy.graph, skip={"initializer"})
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.ByteSize() <= _STAND_IN_MIN_BYTES:
            copy.graph.initializer.append(tensor)
            continue
        stand_in = copy.graph.initializer.add()
        stand_in.name, stand_in.data_type = tensor.name, tensor.data_type
        stand_in.dims.extend(tensor.dims)
        stand_in.data_location = onnx.TensorProto.EXTERNAL
        stand_in.external_data.add(key="location", value="weightless-stand-in")
    return copy


def _copy_fields(source, target, *, skip: set[str]) -> None:
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        slot = getattr(target, field.name)
        if hasattr(slot, "extend"):
            slot.extend(value)
        elif hasattr(slot, "CopyFrom"):
            slot.CopyFrom(value)
        else:
            setattr(target, field.name, value)


def name_unnamed_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique name: the converter names its Casts after nodes, and two
    unnamed nodes would give two Casts the same name (an invalid model)."""
    taken = {node.name for node in graph.node if node.name}
    for index, node in enumerate(graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{index}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)


def output_path_for(model_path: str | Path, precision: str) -> Path:
    """``optimized.onnx`` -> ``optimized.fp16.onnx``."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.{precision}{model_path.suffix or '.onnx'}")


def _external_output(model: ir.Model) -> bool:
    """Whether the converted model's weights go to ``<output>.data``: the input had external
    data, or its weights are large (the threshold :func:`save_model` uses)."""
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    return uses_external_data(model) or weight_bytes >= graph_io.EXTERNAL_DATA_THRESHOLD


def _refuse_input_files(input_path: Path, output_path: Path) -> None:
    """Refused before any work: the output (or its ``.data``) is a file the input consists of."""
    taken = graph_io.model_files(input_path)
    for target in (output_path, output_path.with_name(output_path.name + ".data")):
        if target.resolve() in taken:
            raise TfoptError(f"{target}: is part of the input model ({input_path}); refusing to overwrite the input")


def to_fp16(input_path: str | Path, output_path: str | Path) -> PrecisionResult:
    """ONNX Runtime's fp16 converter on the model's proto, weights read from the input's folder."""
    start = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    model = load_model(input_path)
    _refuse_input_files(input_path, output_path)
    external = _external_output(model)
    proto = ir.serde.serialize_model(model)  # external weights stay references into the input's data file
    del model
    converted = convert_proto_to_fp16(proto, base_dir=input_path.parent)
    save_model(ir.serde.deserialize_model(converted), output_path, refuse=input_path, external=external)
    return PrecisionResult(
        model_path=output_path,
        precision="fp16",
        seconds=time.perf_counter() - start,
        notes=[
            "inputs and outputs kept fp32; kept fp32: the ops computing the outputs (e.g. GPT-2's logits), "
            + ", ".join(NAN_PRONE_OPS)
            + " and ONNX Runtime's default block list",
            "fp16 is meant for GPU providers; on the CPU it runs (where kernels exist) slower than fp32",
        ],
    )


def emulation_path_for(model_path: str | Path) -> Path:
    """Where a bf16 model's CPU emulation is written: ``<stem>.emulated.onnx`` beside it."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.emulated{path.suffix}")


def to_bf16(input_path: str | Path, output_path: str | Path) -> PrecisionResult:
    """bf16 weights and activations for the CUDA target (:mod:`tfopt.bfloat16`), written only if every
    node's types are ones its op's schema takes; with its CPU emulation beside it for verification."""
    from . import bfloat16

    start = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    model = load_model(input_path)
    _refuse_input_files(input_path, output_path)
    external = _external_output(model)
    counts = bfloat16.convert(model)

    def typed(path: Path) -> None:
        problems = bfloat16.structural_problems(path)
        if problems:
            raise TfoptError(f"the bf16 model breaks an op's types ({problems[0]}; {len(problems)} in all); nothing written")

    save_model(model, output_path, refuse=input_path, check=typed, external=external)
    emulation = emulation_path_for(output_path)
    try:
        save_model(bfloat16.emulated(load_model(output_path)), emulation, refuse=input_path, external=external)
    except BaseException:
        for path in graph_io.model_files(output_path) - graph_io.model_files(input_path):
            path.unlink(missing_ok=True)  # no bf16 model without the emulation that verifies it
        raise
    return PrecisionResult(
        model_path=output_path,
        precision="bf16",
        seconds=time.perf_counter() - start,
        emulation_path=emulation,
        notes=[
            f"bf16 weights and activations: {counts['converted']} nodes; fp32 kept for the inputs and outputs, the rotary "
            f"angles and ops without a bf16 type ({counts['kept fp32']} nodes), {counts['casts']} casts between",
            "bf16 is for the CUDA provider: ONNX Runtime's CPU provider has no bf16 kernels for its math, so here the "
            f"model is checked against the ops' schemas and verified through {emulation.name} (fp32 compute, every "
            "value rounded to bf16 where the bf16 model stores it)",
        ],
    )


def gemms_to_matmuls(model: ir.Model) -> int:
    """Gemm(x, W, b) with a constant fp32 W -> Add(MatMul(x, W'), b'), in place; returns how many.

    ONNX Runtime's dynamic quantization has no Gemm kernel (it writes MatMulInteger), so a
    Gemm-form linear (nn.Linear on 2-D input in legacy exports, tf2onnx dense layers) would
    stay fp32. transB and alpha are folded into a new weight, beta into the bias; Gemm with
    transA is left alone.
    """
    graph = model.graph
    rewritten = 0
    for node in list(graph):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
            continue
        attributes = {name: attr.value for name, attr in node.attributes.items()}
        x, weight = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if attributes.get("transA", 0) or weight is None or not weight.is_initializer() or weight.is_graph_input():
            continue
        if weight.const_value is None or weight.const_value.dtype != ir.DataType.FLOAT:
            continue
        alpha, beta = float(attributes.get("alpha", 1.0)), float(attributes.get("beta", 1.0))
        if attributes.get("transB", 0) or alpha != 1.0:
            array = weight.const_value.numpy()
            array = np.ascontiguousarray((array.T if attributes.get("transB", 0) else array) * np.float32(alpha))
            weight = new_initializer(graph, f"{weight.name}.matmul", array)
        new_nodes = [ir.node("MatMul", [x, weight], name=f"{node.name or 'Gemm'}.matmul")]
        if bias is not None and beta != 0.0:
            if beta != 1.0:
                scale = new_initializer(graph, f"{node.name or 'Gemm'}.beta", np.array(beta, np.float32))
                new_nodes.append(ir.node("Mul", [bias, scale], name=f"{node.name or 'Gemm'}.beta_mul"))
                bias = new_nodes[-1].outputs[0]
            new_nodes.append(ir.node("Add", [new_nodes[0].outputs[0], bias], name=f"{node.name or 'Gemm'}.bias"))
        ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, [node.outputs[0]], [new_nodes[-1].outputs[0]])
        rewritten += 1
    for name, value in list(graph.initializers.items()):  # transposed originals nobody reads any more
        if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
            del graph.initializers[name]
    return rewritten


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantizer logs a pre-processing tip on the root logger at every call."""

    def not_the_tip(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(not_the_tip)
    try:
        yield
    finally:
        root.removeFilter(not_the_tip)


def untie_transposed_weights(model: ir.Model) -> int:
    """MatMul(x, Transpose(W)) with a constant 2-D fp32 W -> MatMul(x, W') with W' = W^T its own
    initializer, in place; returns how many. W stays for its other readers (GPT-2's embedding
    Gather), so a tied LM head becomes a constant weight the quantizers can take."""
    graph = model.graph
    rewritten = 0
    for node in list(graph):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        transpose = node.inputs[1].producer() if node.inputs[1] is not None else None
        if transpose is None or transpose.op_type != "Transpose" or transpose.domain not in ("", "ai.onnx"):
            continue
        weight = transpose.inputs[0]
        perm = transpose.attributes.get("perm")
        if weight is None or not weight.is_initializer() or weight.const_value is None or weight.const_value.dtype != ir.DataType.FLOAT:
            continue
        if len(weight.const_value.shape) != 2 or (perm is not None and list(perm.value) != [1, 0]):
            continue
        copy = new_initializer(graph, f"{weight.name}.transposed", _transposed(weight.const_value))
        node.replace_input_with(1, copy)
        if not transpose.outputs[0].uses() and not transpose.outputs[0].is_graph_output():
            graph.remove(transpose, safe=True)
        rewritten += 1
    return rewritten


def _transposed(tensor: ir.TensorProtocol) -> ir.LazyTensor:
    """``tensor``^T, computed when read: a tied head's table is 1 GB at Llama-3.2-1B's size."""
    rows, columns = (int(d) for d in tensor.shape)
    return ir.LazyTensor(lambda: ir.tensor(np.ascontiguousarray(tensor.numpy().T)), dtype=tensor.dtype, shape=ir.Shape([columns, rows]))


def head_node_names(model: ir.Model) -> list[str]:
    """Names of the MatMul/Gemm nodes that compute a model output (GPT-2's LM head), naming unnamed ones."""
    outputs = set(model.graph.outputs)
    names = []
    for index, node in enumerate(model.graph):
        if node.op_type in _HEAD_OPS and outputs.intersection(node.outputs):
            node.name = node.name or f"{node.op_type}_head_{index}"
            names.append(node.name)
    return names


def check_lm_head(lm_head: str) -> str:
    if lm_head not in LM_HEAD_PRECISIONS:
        raise TfoptError(f"lm_head_precision must be one of {', '.join(LM_HEAD_PRECISIONS)}, got {lm_head!r}")
    return lm_head


def _standard_attention_nodes(model_path: Path) -> list[str]:
    """Names of ONNX's own ``Attention`` nodes (opset 23): ONNX Runtime's quantizer takes every
    op named Attention for its contrib op and would write a QAttention that cannot load."""
    model = onnx.load(str(model_path), load_external_data=False)
    return [node.name for node in model.graph.node if node.op_type == "Attention" and node.domain in ("", "ai.onnx")]


def _quantize_dynamic_int8(staged: Path, produced: Path, external: bool, exclude: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = [*exclude, *_standard_attention_nodes(staged)]
    quantize_dynamic(
        staged,
        produced,
        op_types_to_quantize=list(INT8_OP_TYPES),
        weight_type=QuantType.QInt8,
        # one scale per output column: per-tensor weights moved all-MiniLM-L6-v2's pooled
        # embeddings to cosine 0.94 on real sentences, per-column to 0.986 (docs/qat.md)
        per_channel=True,
        nodes_to_exclude=exclude,
        use_external_data_format=external,
        # MatMuls fed by contrib ops (fused attention) have no type onnx can infer; every
        # float in an fp32 model is fp32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


@dataclass
class _Calibrated:
    """What GPTQ needs for each weight: the activation it multiplies and ``X^T X`` of that."""

    weight_inputs: dict[str, str]
    moments: dict[str, np.ndarray]
    rows: int


def _weight_inputs(model_path: Path) -> dict[str, str]:
    """{constant 2-D MatMul weight: the activation it multiplies}, for weights read by one MatMul only."""
    proto = onnx.load(str(model_path), load_external_data=False)
    matrices = {t.name for t in proto.graph.initializer if len(t.dims) == 2}
    readers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(node.input) == 2 and node.input[1] in matrices:
            readers.setdefault(node.input[1], []).append(node.input[0])
    return {weight: activations[0] for weight, activations in readers.items() if len(activations) == 1}


def _calibrate(staged: Path, calibration) -> _Calibrated | None:
    """None when the model has no constant MatMul weight to round."""
    from .gptq import second_moments

    weight_inputs = _weight_inputs(staged)
    if not weight_inputs:
        return None
    moments, rows = second_moments(staged, sorted(set(weight_inputs.values())), calibration)
    return _Calibrated(weight_inputs, moments, rows)


def _rounding(bits: int, block_size: int, calibrated: _Calibrated | None) -> matmul_nbits.Rounding | None:
    """GPTQ's codes for the weights calibration saw (in MatMulNBits' layout); nearest for the rest."""
    if calibrated is None:
        return None
    from .gptq import pack_matmul_nbits, round_weight

    def rounded(name: str, weight: np.ndarray):
        activation = calibrated.weight_inputs.get(name)
        if activation is None:
            return matmul_nbits.nearest(weight, bits, block_size, INT4_SYMMETRIC)
        codes = round_weight(weight, calibrated.moments[activation], bits=bits, block_size=block_size)
        return pack_matmul_nbits(*codes, bits=bits, block_size=block_size)

    return rounded


def _prepared(input_path: Path, output_path: Path, lm_head: str) -> tuple[ir.Model, bool, list[str], list[str]]:
    """The input made ready for quantization: (model, external output, head nodes to leave out, notes).

    Gemm linears become MatMul + Add; a tied head gets its own transposed weight unless it stays fp32.
    """
    check_lm_head(lm_head)
    model = load_model(input_path)  # one-line errors for missing/corrupt input before ORT's own
    _refuse_input_files(input_path, output_path)
    external = _external_output(model)
    notes = []
    gemms = gemms_to_matmuls(model)
    if gemms:
        notes.append(f"{gemms} Gemm linear(s) rewritten as MatMul + Add to be quantized")
    exclude = head_node_names(model) if lm_head in ("fp32", "int8") else []
    if exclude and lm_head == "fp32":
        notes.append(f"LM head kept fp32 ({', '.join(exclude)}; lm_head_precision=fp32)")
    elif untie_transposed_weights(model):
        notes.append(f"tied LM head given its own transposed weight so that it is quantized (lm_head_precision={lm_head})")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    return model, external, exclude, notes


def _staged(model: ir.Model, tmp_dir: Path, external: bool) -> Path:
    """The prepared fp32 model written to ``tmp_dir`` (beside the output), for ONNX Runtime to run or quantize."""
    staged = tmp_dir / "fp32.onnx"
    try:
        write_file(model, staged, "fp32.onnx.data" if external else None)
    except OSError as exc:
        raise TfoptError(f"{tmp_dir.parent}: cannot write ({exc.strerror or exc})") from None
    return staged


def _weight_only(input_path, output_path, precision: str, bits: int, block_size: int, lm_head: str, calibration=None) -> tuple[Path, list[str]]:
    """MatMulNBits for every constant fp32 MatMul weight (:mod:`tfopt.matmul_nbits`), written atomically.

    The weights are quantized one at a time while the output is written, each read from the
    input's data file and released again, so the conversion never holds the model's weights
    (Llama-3.2-1B's 4.9 GB to int4: docs/benchmark-llama.md). GPTQ's calibration alone runs the
    fp32 model, from a staged copy in a temp dir beside the output.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    model, external, exclude, notes = _prepared(input_path, output_path, lm_head)
    calibrated = None
    if calibration is not None:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_path.name}.", dir=output_path.parent))
        try:
            calibrated = _calibrate(_staged(model, tmp_dir, external), calibration)
        except TfoptError:
            raise
        except Exception as exc:
            raise TfoptError(f"{precision} calibration failed ({first_line(exc)})") from None
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if calibrated is not None:
            notes.append(f"weights rounded by GPTQ, calibrated on {calibrated.rows} activation rows")
    head = set(exclude)
    matmul_nbits.quantize_matmuls(
        model, bits=bits, block_size=block_size, accuracy_level=INT4_ACCURACY_LEVEL, symmetric=INT4_SYMMETRIC,
        rounding=_rounding(bits, block_size, calibrated), include=lambda node: node.name not in head,
    )
    if lm_head == "int8" and exclude:  # the head alone, 8-bit weight-only
        matmul_nbits.quantize_matmuls(
            model, bits=8, block_size=INT4_BLOCK_SIZE, accuracy_level=INT4_ACCURACY_LEVEL, symmetric=INT4_SYMMETRIC,
            rounding=_rounding(8, INT4_BLOCK_SIZE, calibrated), include=lambda node: node.name in head,
        )
        notes.append(f"LM head int8 weight-only ({', '.join(exclude)}; lm_head_precision=int8)")
    try:
        save_model(model, output_path, refuse=input_path, external=external)
    except OSError as exc:
        raise TfoptError(f"{output_path.parent}: cannot write ({exc.strerror or exc})") from None
    return output_path, notes


def _dynamic_int8(input_path, output_path, lm_head: str) -> tuple[Path, list[str]]:
    """ONNX Runtime's dynamic quantization on a staged copy in a temp dir beside the output, then renamed into place.

    The copy keeps its weights as external data when the output will, so ONNX Runtime's
    quantizer infers shapes by path and writes ``<output>.data`` itself: nothing is serialized
    whole, and its scratch files land in the temp dir, not beside the input.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    model, external, exclude, notes = _prepared(input_path, output_path, lm_head)
    data_name = output_path.name + ".data"
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_path.name}.", dir=output_path.parent))
    try:
        staged = _staged(model, tmp_dir, external)
        del model
        passes = [(_quantize_dynamic_int8, exclude)]
        if lm_head == "int8" and exclude:  # a second pass takes the head alone, 8-bit weight-only
            passes.append((_head_weight_only_int8, exclude))
            notes.append(f"LM head int8 weight-only ({', '.join(exclude)}; lm_head_precision=int8)")
        produced = tmp_dir / output_path.name
        try:
            with _quiet_quantizer():
                current = staged
                for index, (step, skip) in enumerate(passes):
                    written = produced if index == len(passes) - 1 else tmp_dir / f"pass{index}.onnx"
                    step(current, written, external, skip)
                    current = written
        except Exception as exc:
            raise TfoptError(f"int8 quantization failed ({first_line(exc)})") from None
        if (tmp_dir / data_name).exists():
            # onnx writes external data owner-only; give it the model file's permissions
            os.chmod(tmp_dir / data_name, produced.stat().st_mode & 0o777)
            os.replace(tmp_dir / data_name, output_path.parent / data_name)
        elif (output_path.parent / data_name).is_file() and output_path.is_file():
            (output_path.parent / data_name).unlink()  # an earlier output's weights, no longer referenced
        os.replace(produced, output_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return output_path, notes


def _head_weight_only_int8(staged: Path, produced: Path, external: bool, head: list[str]) -> None:
    """The head nodes of a dynamically quantized model as 8-bit MatMulNBits (dynamic int8 left them fp32)."""
    model = load_model(staged)
    names = set(head)
    matmul_nbits.quantize_matmuls(
        model, bits=8, block_size=INT4_BLOCK_SIZE, accuracy_level=INT4_ACCURACY_LEVEL, symmetric=INT4_SYMMETRIC,
        include=lambda node: node.name in names,
    )
    write_file(model, produced, produced.name + ".data" if external else None)


def to_int8(
    input_path: str | Path, output_path: str | Path, *, lm_head: str = "quantized", method: str = "dynamic",
    calibration: Calibration | None = None,
) -> PrecisionResult:
    """ONNX Runtime's dynamic quantization (int8 weights, activations quantized at run time), or
    weight-only 8-bit MatMulNBits (``method="weight_only"``; GPTQ-rounded when ``calibration`` is given)."""
    if method not in INT8_METHODS:
        raise TfoptError(f"int8_method must be one of {', '.join(INT8_METHODS)}, got {method!r}")
    if calibration is not None and method != "weight_only":
        raise TfoptError("calibrated rounding (GPTQ) is for weight-only int8 and int4, not dynamic int8")
    start = time.perf_counter()
    if method == "weight_only":
        path, notes = _weight_only(input_path, output_path, "int8", 8, INT4_BLOCK_SIZE, lm_head, calibration)
        notes.insert(
            0,
            f"weight-only int8: MatMulNBits, blocks of {INT4_BLOCK_SIZE} along K, {'symmetric' if INT4_SYMMETRIC else 'with zero points'},"
            f" accuracy_level {INT4_ACCURACY_LEVEL}",
        )
    else:
        path, notes = _dynamic_int8(input_path, output_path, lm_head)
        notes.insert(0, f"dynamic quantization: int8 weights for {', '.join(INT8_OP_TYPES)}, activations quantized at run time")
    return PrecisionResult(model_path=path, precision="int8", seconds=time.perf_counter() - start, notes=notes)


def to_int4(
    input_path: str | Path, output_path: str | Path, *, lm_head: str = "quantized", block_size: int = INT4_BLOCK_SIZE,
    calibration: Calibration | None = None,
) -> PrecisionResult:
    """Weight-only 4-bit MatMuls (ONNX Runtime's MatMulNBits, block-wise, a zero point per block),
    rounded to nearest, or by GPTQ when ``calibration`` feeds are given."""
    if block_size < 16 or block_size & (block_size - 1):
        raise TfoptError(f"int4 block size must be a power of two >= 16, got {block_size}")
    start = time.perf_counter()
    path, notes = _weight_only(input_path, output_path, "int4", 4, block_size, lm_head, calibration)
    notes.insert(
        0,
        f"weight-only int4: MatMulNBits, blocks of {block_size} along K, {'symmetric' if INT4_SYMMETRIC else 'with zero points'},"
        f" accuracy_level {INT4_ACCURACY_LEVEL}"
        " (activations int8 inside the kernel); other ops fp32",
    )
    return PrecisionResult(model_path=path, precision="int4", seconds=time.perf_counter() - start, notes=notes)


def convert(
    input_path: str | Path,
    precision: str,
    output_path: str | Path | None = None,
    *,
    lm_head: str = "quantized",
    int8_method: str = "dynamic",
    int4_block_size: int = INT4_BLOCK_SIZE,
    calibration: Calibration | None = None,
) -> PrecisionResult:
    """fp32 returns the input as is; fp16/bf16/int8/int4 write ``<stem>.<precision>.onnx`` beside it
    (bf16 also its CPU emulation, ``<stem>.bf16.emulated.onnx``).

    ``lm_head`` ("quantized", "int8" or "fp32") is what int8/int4 do with the MatMul computing
    a model output; fp16 always keeps it fp32 (the logits' overflow). ``calibration``, a
    callable giving the input model's feeds for an ONNX Runtime session of it, makes the
    weight-only precisions round by GPTQ (:mod:`tfopt.gptq`) instead of to nearest.
    """
    if precision not in PRECISIONS:
        raise TfoptError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    check_lm_head(lm_head)
    if precision == "fp32":
        return PrecisionResult(model_path=Path(input_path), precision="fp32")
    output_path = output_path_for(input_path, precision) if output_path is None else output_path
    if precision == "fp16":
        return to_fp16(input_path, output_path)
    if precision == "bf16":
        return to_bf16(input_path, output_path)
    if precision == "int8":
        return to_int8(input_path, output_path, lm_head=lm_head, method=int8_method, calibration=calibration)
    return to_int4(input_path, output_path, lm_head=lm_head, block_size=int4_block_size, calibration=calibration)
