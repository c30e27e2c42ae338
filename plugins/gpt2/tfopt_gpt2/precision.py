"""The ``convert_precision`` hook: the host's conversion with the decoder's choices.

int8 is weight-only here (``int8_method=weight_only``, MatMulNBits with 8 bits): on the trained
stdlib-gpt2 it agrees with fp32 better than dynamic int8 (per-tensor activations: 98.8% vs
98.0% top-1), which is faster here (0.49x vs 0.61x of ORT raw at b=1; docs/benchmark-gpt2.md);
``--option int8_method=dynamic`` picks speed.

int8 (dynamic) and int4 (weight-only MatMulNBits) quantize the LM head by default: at GPT-2
small's shape it is 154 MB of the 494 MB each decode step reads, so keeping it fp32 costs
most of the gain (docs/benchmark-gpt2.md). ``lm_head_precision=fp32`` keeps it, for a
vocabulary whose logits need it; ``lm_head_precision=int8`` gives an int4 model an 8-bit head.
``int4_block_size`` (default 32) sets MatMulNBits' block along K: 16 is more accurate and
reads more bytes (a scale per 16 weights).
"""

from __future__ import annotations

from tfopt import precision as host_precision
from tfopt.errors import TfoptError
from tfopt.results import FuseResult, PrecisionResult, RunContext

LM_HEAD_OPTION = "lm_head_precision"
INT8_METHOD_OPTION = "int8_method"
INT4_BLOCK_OPTION = "int4_block_size"
DEFAULT_INT8_METHOD = "weight_only"


def convert_decoder(ctx: RunContext, fused: FuseResult) -> PrecisionResult:
    precision = ctx.option("precision", "fp32")
    lm_head = str(ctx.option(LM_HEAD_OPTION, "quantized"))
    host_precision.check_lm_head(lm_head)
    if precision != "fp32":
        ctx.progress(f"converting to {precision} (LM head: {lm_head if precision in ('int8', 'int4') else 'fp32'}) ...")
    method = str(ctx.option(INT8_METHOD_OPTION, DEFAULT_INT8_METHOD))
    block = ctx.option(INT4_BLOCK_OPTION, host_precision.INT4_BLOCK_SIZE)
    if isinstance(block, bool) or not isinstance(block, int):
        raise TfoptError(f"{INT4_BLOCK_OPTION} must be an integer, got {block!r}")
    converted = host_precision.convert(
        fused.model_path, precision, lm_head=lm_head, int8_method=method, int4_block_size=block
    )
    if precision != "fp32" and ctx.option("validate", True):
        from tfopt.graph.validate import validate_written

        converted.validation = validate_written(converted.model_path, fused.model_path, precision)
    return converted
