"""The ``fuse`` hook for ``--target cuda``: fuse and validate the runnable form, then rewrite the attention.

For the CPU target the host's default ``fuse`` does everything (the expected counts travel in
``ModelInfo.expected``). A CUDA-target model cannot be validated by running it here: ONNX
Runtime has no CPU kernel for ``com.microsoft::LongformerAttention``. So the model is fused
and validated (``write_validated`` through ``fuse_file``) with the attention still in its
standard-op form, then only the attention nodes are rewritten (:func:`.onnx_attention.to_contrib`)
and the result is checked against the contrib op's schema before it is written.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import onnx
import onnx_ir as ir

from tfopt.errors import TfoptError
from tfopt.graph import count_ops, fuse_file, missing_fusions
from tfopt.graph.io import save_model
from tfopt.graph.leftovers import leftover_primitives
from tfopt.results import ExportResult, FuseResult, RunContext

from .onnx_attention import schema_problems, to_contrib

OPTIMIZED_FILE = "optimized.onnx"
CUDA_NOTE = (
    "CUDA target: ONNX Runtime has no CPU kernel for com.microsoft::LongformerAttention, so the written model "
    "was validated before its attention nodes were rewritten (standard-op form) and checked against the op's schema after"
)


def fuse_cuda(ctx: RunContext, exported: ExportResult) -> FuseResult:
    start = time.perf_counter()
    output = Path(ctx.work_dir) / OPTIMIZED_FILE
    scratch = Path(tempfile.mkdtemp(prefix=".tfopt-longformer-", dir=ctx.work_dir))
    try:
        ctx.progress(f"fusing {Path(exported.model_path).name} (standard-op attention, validated) ...")
        functional = fuse_file(
            exported.model_path, scratch / OPTIMIZED_FILE, exported.info,
            disabled=ctx.option("disabled", ()), input_int32=bool(ctx.option("input_int32", False)),
            target="cuda", validate=bool(ctx.option("validate", True)), progress=ctx.progress,
        )
        ctx.progress("rewriting the attention into com.microsoft::LongformerAttention ...")
        written = write_contrib(functional.model_path, output)
        op_counts, leftover = count_ops(written), leftover_primitives(written)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    disabled = ctx.option("disabled", ())
    validation = functional.validation
    if validation is not None:
        validation.notes.append(CUDA_NOTE)
    return FuseResult(
        model_path=output,
        op_counts=op_counts,
        rule_counts=functional.rule_counts,
        expected=functional.expected,
        missing=missing_fusions(functional.expected, op_counts, disabled, leftover),
        leftover=leftover,
        seconds=time.perf_counter() - start,
        validation=validation,
        dropped_rules=functional.dropped_rules,
    )


def write_contrib(source: Path, output: Path) -> ir.Model:
    """``source`` with its attention as ONNX Runtime's contrib op, written atomically; schema problems refuse it.

    Returns the model written (its op counts are the fuse result's: no second read of either file).
    """
    proto = onnx.load(str(source), load_external_data=False)  # one read: where the weights live, then the weights
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    onnx.load_external_data_for_model(proto, str(source.parent))
    if to_contrib(proto) == 0:
        raise TfoptError(f"{source.name}: no LongformerAttention node to rewrite for the CUDA target")
    problems = schema_problems(proto)
    if problems:
        raise TfoptError(f"the CUDA-target model breaks com.microsoft::LongformerAttention's schema: {problems[0]}")
    model = ir.serde.deserialize_model(proto)
    save_model(model, output, external=external)
    return model
