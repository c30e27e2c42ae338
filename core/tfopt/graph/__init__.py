"""The fusion toolkit: onnx-ir + onnxscript rewriter rules that turn exported graphs into
ONNX Runtime contrib ops.

Entry points:

- :func:`fuse_model` rewrites an ``ir.Model`` in place and returns :class:`FusionStats`.
- :func:`fuse_file` loads, fuses, validates and atomically saves, returning a ``FuseResult``.
- :class:`FusionRules`: a family's own rules and where they run (``extra_rules=`` or ``ModelInfo.rules``).
- :func:`expected_counts`, :func:`encoder_counts`, :func:`decoder_counts`, :func:`llm_counts`: what a fully fused
  model contains; :func:`missing_fusions`: the lines saying what fell short (expected counts, and the primitives
  :mod:`tfopt.graph.leftovers` finds still in the graph); :func:`fusion_shortfall`: those that fail a run.
"""

from .fusion import (
    FUSION_NAMES,
    MODEL_TYPES,
    PLAN_STAGES,
    FusionRules,
    FusionStats,
    count_ops,
    decoder_counts,
    encoder_counts,
    expected_counts,
    fuse_file,
    fuse_model,
    fusion_shortfall,
    llm_counts,
    missing_fusions,
)
from .io import load_model, read_io_spec, save_model

__all__ = [
    "FUSION_NAMES",
    "MODEL_TYPES",
    "PLAN_STAGES",
    "FusionRules",
    "FusionStats",
    "count_ops",
    "decoder_counts",
    "encoder_counts",
    "expected_counts",
    "fuse_file",
    "fuse_model",
    "fusion_shortfall",
    "llm_counts",
    "load_model",
    "missing_fusions",
    "read_io_spec",
    "save_model",
]
