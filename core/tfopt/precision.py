"""fp16 and int8 versions of a fused model, written atomically beside it.

fp16 uses ONNX Runtime's own converter (it knows which contrib-op inputs must stay
fp32, e.g. masks and ids) with inputs and outputs kept fp32, so callers feed the same
arrays. int8 is ONNX Runtime's dynamic quantization: int8 weights, activations
quantized on the fly, for MatMul and the packed Attention op.

On the CPU: fp16 is a GPU format. ONNX Runtime 1.32 does run the fp16 contrib ops
this project emits on its CPU provider (measured: EmbedLayerNormalization, Attention,
MultiHeadAttention, SkipLayerNormalization, BiasGelu), but slower than fp32 and not
every contrib op has an fp16 CPU kernel in every version; when ONNX Runtime cannot
load the model, verification says so in one line instead of producing numbers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import onnx
import onnx_ir as ir

from .errors import TfoptError, first_line
from .graph.io import load_model, save_model
from .results import PrecisionResult

PRECISIONS = ("fp32", "fp16", "int8")

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
    model: onnx.ModelProto, *, keep_io_types: bool = True, op_block_list=None, **converter_options
) -> onnx.ModelProto:
    """fp16 weights and compute, except the ops in the block list; same fp32 IO by default.

    ``converter_options`` go to ONNX Runtime's converter as they are (``node_block_list``,
    ``force_fp16_initializers``, ``min_positive_val``, ``max_finite_val``).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    block = fp16_block_list() if op_block_list is None else list(op_block_list)
    name_unnamed_nodes(model.graph)
    model = with_inferred_types(model)
    converter_options.setdefault("disable_shape_infer", True)  # done above, safely
    converter_options.setdefault("node_block_list", output_producers(model.graph))
    try:
        converted = convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=block, **converter_options)
        keep_chains_fp32(converted.graph)
        return converted
    except Exception as exc:
        raise TfoptError(f"fp16 conversion failed ({first_line(exc)})") from None


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


def with_inferred_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with value_info for every tensor ONNX can type.

    The converter keeps a blocked op in fp32 by casting around it, which it can only
    do for tensors whose type it knows: without value_info the block list silently does
    nothing. Protos over 2 GB cannot go through ONNX's inference; they keep the types
    onnx-ir wrote for them when the fused model was saved.
    """
    if model.ByteSize() >= 2**31 - 1:
        return model
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # contrib ops onnx does not know stay untyped; the rest still converts
        return model


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


def to_fp16(input_path: str | Path, output_path: str | Path) -> PrecisionResult:
    start = time.perf_counter()
    model = ir.serde.serialize_model(load_model(input_path))  # loads external weights: the converter needs them
    converted = convert_proto_to_fp16(model)
    save_model(ir.serde.deserialize_model(converted), output_path, refuse=input_path)
    return PrecisionResult(
        model_path=Path(output_path),
        precision="fp16",
        seconds=time.perf_counter() - start,
        notes=[
            "inputs and outputs kept fp32; kept fp32: the ops computing the outputs (e.g. GPT-2's logits), "
            + ", ".join(NAN_PRONE_OPS)
            + " and ONNX Runtime's default block list",
            "fp16 is meant for GPU providers; on the CPU it runs (where kernels exist) slower than fp32",
        ],
    )


def to_int8(input_path: str | Path, output_path: str | Path) -> PrecisionResult:
    """Dynamic quantization into a temp dir beside the output, then renamed into place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    start = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    load_model(input_path)  # one-line errors for missing/corrupt input before ORT's own
    if output_path.resolve() == input_path.resolve():
        raise TfoptError(f"{output_path}: output path is the input path; refusing to overwrite the input")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    external = any(
        init.data_location == onnx.TensorProto.EXTERNAL
        for init in onnx.load(str(input_path), load_external_data=False).graph.initializer
    )
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_path.name}.", dir=output_path.parent))
    try:
        tmp_model = tmp_dir / output_path.name
        try:
            quantize_dynamic(
                input_path,
                tmp_model,
                op_types_to_quantize=list(INT8_OP_TYPES),
                weight_type=QuantType.QInt8,
                use_external_data_format=external,
            )
        except Exception as exc:
            raise TfoptError(f"int8 quantization failed ({first_line(exc)})") from None
        for produced in sorted(tmp_dir.iterdir(), key=lambda p: p == tmp_model):  # the model file last
            os.replace(produced, output_path.parent / produced.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return PrecisionResult(
        model_path=output_path,
        precision="int8",
        seconds=time.perf_counter() - start,
        notes=[f"dynamic quantization: int8 weights for {', '.join(INT8_OP_TYPES)}, activations quantized at run time"],
    )


def convert(input_path: str | Path, precision: str, output_path: str | Path | None = None) -> PrecisionResult:
    """fp32 returns the input as is; fp16/int8 write ``<stem>.<precision>.onnx`` beside it."""
    if precision not in PRECISIONS:
        raise TfoptError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return PrecisionResult(model_path=Path(input_path), precision="fp32")
    output_path = output_path_for(input_path, precision) if output_path is None else output_path
    return (to_fp16 if precision == "fp16" else to_int8)(input_path, output_path)
