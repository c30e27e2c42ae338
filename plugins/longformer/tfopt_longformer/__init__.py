"""tfopt adapter for Longformer (PyTorch), with a C++ attention extension.

Registered under the entry point ``longformer``. ``csrc/`` holds the extension
(``torch.ops.tfopt_longformer.attention``, built on first use: :mod:`.extension`);
:mod:`.modeling` patches it into Hugging Face's LongformerModel; :mod:`.onnx_attention`
writes the attention as standard ONNX ops (CPU target) or ONNX Runtime's
``com.microsoft::LongformerAttention`` (CUDA target).
"""

from .hooks import (
    benchmark_hook,
    convert_precision_hook,
    export_hook,
    fuse_hook,
    make_dummy_inputs_hook,
    verify_hook,
)

__all__ = ["benchmark_hook", "convert_precision_hook", "export_hook", "fuse_hook", "make_dummy_inputs_hook", "verify_hook"]
