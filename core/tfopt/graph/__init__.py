"""The fusion toolkit: onnx-ir + onnxscript rewriter rules that turn exported graphs into
ONNX Runtime contrib ops.

Entry points:

- :func:`fuse_model` rewrites an ``ir.Model`` in place and returns :class:`FusionStats`.
- :func:`fuse_file` loads, fuses and atomically saves, returning a ``FuseResult``.
"""

from .fusion import FUSION_NAMES, FusionStats, count_ops, expected_counts, fuse_file, fuse_model
from .io import load_model, read_io_spec, save_model

__all__ = [
    "FUSION_NAMES",
    "FusionStats",
    "count_ops",
    "expected_counts",
    "fuse_file",
    "fuse_model",
    "load_model",
    "read_io_spec",
    "save_model",
]
