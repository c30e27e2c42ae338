"""Run the fusion rules over a model and account for what fired."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import onnx_ir as ir

from ..results import FuseResult, ModelInfo
from .io import load_model, save_model

# User-facing fusion names (also the --disable_* flags of `tfopt optimize`).
FUSION_NAMES = (
    "layer_norm",
    "gelu",
    "fast_gelu",
    "bias_gelu",
    "skip_layer_norm",
    "embed_layer_norm",
    "attention",
)


@dataclass
class FusionStats:
    op_counts: dict[str, int]
    rule_counts: dict[str, int]
    expected: dict[str, int]
    missing: list[str]
    num_heads: int = 0
    hidden_size: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def expected_counts(info: ModelInfo) -> dict[str, int]:
    raise NotImplementedError  # filled in by the fusion work in progress


def fuse_model(
    model: ir.Model, info: ModelInfo, *, disabled: Iterable[str] = (), input_int32: bool = False
) -> FusionStats:
    raise NotImplementedError  # filled in by the fusion work in progress


def fuse_file(
    input_path: str | Path,
    output_path: str | Path,
    info: ModelInfo,
    *,
    disabled: Iterable[str] = (),
    input_int32: bool = False,
) -> FuseResult:
    """Load, fuse and atomically save; the input file is never modified."""
    model = load_model(input_path)
    stats = fuse_model(model, info, disabled=disabled, input_int32=input_int32)
    save_model(model, output_path, refuse=input_path)
    return FuseResult(
        model_path=Path(output_path),
        op_counts=stats.op_counts,
        rule_counts=stats.rule_counts,
        expected=stats.expected,
        missing=stats.missing,
        seconds=stats.seconds,
    )
