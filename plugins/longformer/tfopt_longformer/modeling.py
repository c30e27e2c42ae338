"""Hugging Face's LongformerModel with its self-attention replaced by one op per layer.

:class:`PackedSelfAttention` holds a layer's six projections packed as ONNX Runtime's
``LongformerAttention`` wants them (weight "format 1": ``[Wq^T | Wk^T | Wv^T]``, shape (E, 3E)).
In eager mode it calls the C++ extension; under ``torch.onnx.export`` it becomes one
``tfopt.longformer::LongformerAttention`` node (:mod:`tfopt_longformer.onnx_attention` gives it
a body in standard ONNX ops for the CPU, or turns it into ``com.microsoft::LongformerAttention``).

:class:`LongformerForExport` runs HF's own embeddings, output projections, LayerNorms and
feed-forward blocks around it, so the only code of ours in the forward pass is the attention.
It needs no padding to a multiple of the window (the op handles any length) and has no
data-dependent Python control flow, which is what keeps ``LongformerModel`` from exporting.
"""

from __future__ import annotations

import torch
from torch import nn

from . import extension

DOMAIN = "tfopt.longformer"
OP_TYPE = "LongformerAttention"
MASKED = -10000.0  # ONNX Runtime's convention for the float mask: 0 = attend, -10000 = padding


def pack(self_attention) -> dict[str, torch.Tensor]:
    """The (E, 3E) weights and (3E,) biases of a ``LongformerSelfAttention``, local and global."""
    local = (self_attention.query, self_attention.key, self_attention.value)
    glob = (self_attention.query_global, self_attention.key_global, self_attention.value_global)
    with torch.no_grad():
        return {
            "weight": torch.cat([m.weight.t() for m in local], dim=1).contiguous(),
            "bias": torch.cat([m.bias for m in local]).contiguous(),
            "global_weight": torch.cat([m.weight.t() for m in glob], dim=1).contiguous(),
            "global_bias": torch.cat([m.bias for m in glob]).contiguous(),
        }


class PackedSelfAttention(nn.Module):
    def __init__(self, self_attention, impl: str = "loops"):
        super().__init__()
        for name, tensor in pack(self_attention).items():
            self.register_buffer(name, tensor)
        self.num_heads = int(self_attention.num_heads)
        self.window = int(self_attention.one_sided_attn_window_size)
        self.impl = impl

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, is_global: torch.Tensor) -> torch.Tensor:
        args = (hidden, self.weight, self.bias, mask, self.global_weight, self.global_bias, is_global)
        if torch.onnx.is_in_onnx_export():
            return torch.onnx.ops.symbolic(
                f"{DOMAIN}::{OP_TYPE}",
                args,
                {"num_heads": self.num_heads, "window": self.window},
                dtype=hidden.dtype,
                shape=hidden.shape,
                version=1,
            )
        return extension.attention(*args, self.num_heads, self.window, impl=self.impl)


def op_masks(attention_mask: torch.Tensor, global_attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's 0/1 masks as the op takes them: float mask (0 / -10000) and int32 global flags of unpadded tokens."""
    mask = (attention_mask == 0).to(torch.float32) * MASKED
    is_global = ((global_attention_mask != 0) & (attention_mask != 0)).to(torch.int32)
    return mask, is_global


class LongformerForExport(nn.Module):
    """``LongformerModel``'s last_hidden_state, computed with one attention op per layer."""

    def __init__(self, model, impl: str = "loops"):
        super().__init__()
        self.embeddings = model.embeddings
        self.layers = model.encoder.layer
        self.attentions = nn.ModuleList(PackedSelfAttention(layer.attention.self, impl) for layer in self.layers)

    def forward(self, input_ids, attention_mask, global_attention_mask):
        mask, is_global = op_masks(attention_mask, global_attention_mask)
        hidden = self.embeddings(input_ids=input_ids)
        for layer, attention in zip(self.layers, self.attentions):
            attended = layer.attention.output(attention(hidden, mask, is_global), hidden)
            hidden = layer.output(layer.intermediate(attended), attended)
        return hidden
