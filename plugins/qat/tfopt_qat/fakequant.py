"""Fake quantization on the encoder's Linear layers, with torch.ao.quantization's FakeQuantize.

Every Linear of the encoder (query, key, value, attention output, intermediate, output) gets
int8 weights (per output channel, symmetric, range [-127, 127], zero point 0) and uint8
activations (per tensor, affine, moving-average min/max). These are the forms ONNX Runtime's
CPU integer MatMul kernels take (u8 activations x s8 weights). Query, key and value read the
same tensor, so they share one activation quantizer: one QuantizeLinear feeds all three.

Left in fp32, on purpose: the pooler and the classifier (two small Linears on one token,
a fraction of a percent of the work, and the layers nearest the labels), the embeddings,
LayerNorm, and the attention score/context matmuls (ONNX Runtime's fused CPU attention
computes them in fp32; see docs/qat.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
ACT_QMIN, ACT_QMAX = 0, 255


def activation_quantizer() -> FakeQuantize:
    return FakeQuantize(
        observer=MovingAverageMinMaxObserver, quant_min=ACT_QMIN, quant_max=ACT_QMAX,
        dtype=torch.quint8, qscheme=torch.per_tensor_affine, averaging_constant=0.01,
    )


def weight_quantizer() -> FakeQuantize:
    return FakeQuantize(
        observer=MovingAveragePerChannelMinMaxObserver, quant_min=WEIGHT_QMIN, quant_max=WEIGHT_QMAX,
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0, averaging_constant=1.0,
    )


class QuantLinear(nn.Module):
    """``linear(fq_act(x), fq_weight(W), b)``; the wrapped Linear keeps its parameters."""

    def __init__(self, linear: nn.Linear, input_quantizer: FakeQuantize | None = None):
        super().__init__()
        self.linear = linear
        self.input_quantizer = input_quantizer if input_quantizer is not None else activation_quantizer()
        self.weight_quantizer = weight_quantizer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.linear.weight), self.linear.bias)


def encoder_of(model: nn.Module) -> nn.Module:
    return model.base_model.encoder


def _attention_groups(encoder: nn.Module):
    """(parent, [child names]) for each module whose Linears read one tensor (query/key/value)."""
    for module in encoder.modules():
        names = [n for n in ("query", "key", "value") if isinstance(getattr(module, n, None), nn.Linear)]
        if len(names) == 3:
            yield module, names


def prepare_qat(model: nn.Module) -> nn.Module:
    """Wrap every encoder Linear in place (idempotent); returns the model."""
    encoder = encoder_of(model)
    for parent, names in list(_attention_groups(encoder)):
        shared = activation_quantizer()
        for name in names:
            setattr(parent, name, QuantLinear(getattr(parent, name), shared))
    for name, module in list(encoder.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and not isinstance(module, QuantLinear):
                setattr(module, child_name, QuantLinear(child))
    return model


def freeze_observers(model: nn.Module) -> None:
    """Stop updating ranges; the scales trained so far are the ones exported."""
    model.apply(torch.ao.quantization.disable_observer)


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, QuantLinear)}


@dataclass
class LinearQuant:
    """The trained quantization of one Linear, in the layout of ONNX's MatMul(x, W^T)."""

    name: str
    weight_t: np.ndarray  # [in, out] float32: the MatMul's B as exported
    weight_scale: np.ndarray  # [out] float32
    input_scale: float
    input_zero_point: int  # uint8


def trained_quantization(model: nn.Module) -> list[LinearQuant]:
    found = []
    for name, module in quant_linears(model).items():
        act, wq = module.input_quantizer, module.weight_quantizer
        if int(wq.zero_point.abs().max()) != 0:
            raise AssertionError(f"{name}: weight zero point must be 0 (symmetric)")
        found.append(LinearQuant(
            name=name,
            weight_t=module.linear.weight.detach().float().numpy().T.copy(),
            weight_scale=wq.scale.detach().float().numpy().reshape(-1).copy(),
            input_scale=float(act.scale.reshape(-1)[0]),
            input_zero_point=int(act.zero_point.reshape(-1)[0]),
        ))
    return found


def strip_qat(model: nn.Module) -> nn.Module:
    """A copy with every QuantLinear replaced by its plain Linear (the float weights QAT trained)."""
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, QuantLinear):
                setattr(module, child_name, child.linear)
    return plain
