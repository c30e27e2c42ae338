"""``convert_precision`` for the CUDA target (the CPU target uses the host's default, validated by running).

fp16: ONNX Runtime's converter (through ``tfopt.precision``) turns the contrib model's weights,
mask and compute to fp16 with fp32 inputs/outputs; the result is checked against the contrib
op's schema (T bound to float16 for input, weights, biases and mask) and validated by running
its stand-in (contrib nodes computed by the standard-op body) against the fp32 model's stand-in
at fp16 tolerance. ONNX Runtime's CUDA fp16 kernel itself is not run here: no GPU.
int8 is refused: dynamic quantization is a CPU-provider format.
"""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from tfopt.errors import TfoptError
from tfopt.graph.io import save_model
from tfopt.graph.validate import Reference
from tfopt.precision import convert_proto_to_fp16, output_path_for
from tfopt.results import FuseResult, PrecisionResult, RunContext

from .onnx_attention import schema_problems
from .verify import runnable


def convert_cuda(ctx: RunContext, fused: FuseResult, precision: str) -> PrecisionResult:
    if precision != "fp16":
        raise TfoptError(f"--precision {precision} is not offered for the longformer CUDA target (fp32 or fp16; int8 is for --target cpu)")
    from onnx_ir import serde

    start = time.perf_counter()
    source = Path(fused.model_path)
    output = Path(output_path_for(source, "fp16"))
    ctx.progress("converting to fp16 ...")
    proto = onnx.load(str(source), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    converted = convert_proto_to_fp16(proto, base_dir=source.parent)
    problems = schema_problems(converted)
    if problems:
        raise TfoptError(f"the fp16 CUDA-target model breaks com.microsoft::LongformerAttention's schema: {problems[0]}")
    save_model(serde.deserialize_model(converted), output, refuse=source, external=external)
    result = PrecisionResult(model_path=output, precision="fp16", seconds=0.0, notes=[
        "CUDA target fp16: checked against the contrib op's schema and, computed by the standard-op body, "
        "against the fp32 model on the CPU; ONNX Runtime's CUDA kernel not run (no GPU)"
    ])
    if ctx.option("validate", True):
        with runnable(source) as (reference, _), runnable(output) as (candidate, _):
            result.validation = Reference(reference).validate(candidate, "fp16")
        if not result.validation.passed:
            for path in (output, output.with_name(output.name + ".data")):
                path.unlink(missing_ok=True)
            raise TfoptError(f"{output.name}: the fp16 model failed validation ({result.validation.problem}); it was removed")
    result.seconds = time.perf_counter() - start
    return result
