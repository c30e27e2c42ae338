"""fp32 ONNX export of a trained classifier (logits), dynamic batch and sequence.

The TorchScript exporter (``dynamo=False``) writes each encoder Linear as MatMul(x, W^T) with
W^T a constant-folded initializer: :mod:`tfopt_qat.qdq` finds the Linears there by value.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from tfopt.torch_kit import quiet_export

OPSET = 17


class _Logits(nn.Module):
    """Keyword call (transformers 5 wants it for the TorchScript exporter), logits out."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors):
        return self.model(**dict(zip(self.names, tensors))).logits


def input_names(model: nn.Module) -> tuple[str, ...]:
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 1) > 1:
        names.append("token_type_ids")
    return tuple(names)


def export_logits(model: nn.Module, path: Path) -> tuple[str, ...]:
    """Write ``path`` atomically; returns the graph's input names."""
    names = input_names(model)
    wrapper = _Logits(model, names).eval()
    example = tuple(torch.ones(2, 8, dtype=torch.int64) for _ in names)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
    dynamic["logits"] = {0: "batch"}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with quiet_export(), torch.inference_mode():
        torch.onnx.export(
            wrapper, example, str(tmp), input_names=list(names), output_names=["logits"],
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    os.replace(tmp, path)
    return names
