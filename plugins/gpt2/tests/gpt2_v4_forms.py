"""GPT-2 as transformers 4.x + ONNX Runtime's ``convert_to_onnx`` exported it, rebuilt here without any download.

That exporter wrapped ``GPT2LMHeadModel`` so that each layer's past is ONE stacked tensor
``past_i`` [2, batch, heads, past, head_size] and each present is ``present_i`` stacked the
same way; inside, transformers 4.x sliced the causal mask from a constant lower-triangular
``bias`` buffer [1, 1, n_positions, n_positions] and applied it with ``Where``, turned the
2-D ``attention_mask`` into an additive ``(1 - mask) * finfo.min``, and ran every Conv1D as
``addmm`` behind a flatten (``Gemm`` between two dynamic reshapes).

:class:`V4Gpt2` computes that with the weights of a transformers 5 ``GPT2LMHeadModel``
(so torch's own model is the reference), and a few deliberately wrong masks (``causal``)
for tests that a fusion must refuse.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# Causal masks: "tril" is what transformers 4.x did; the others compute something else.
CAUSAL_FORMS = (
    "tril",  # bias[:, :, k - q : k, :k] of tril(ones)
    "strict",  # tril(ones, diagonal=-1): a token does not see itself
    "from_zero",  # bias[:, :, :q, :k]: right only when past is empty
)


def _conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """transformers 4.x ``Conv1D.forward``: flatten to 2-D, ``addmm``, unflatten."""
    size_out = x.size()[:-1] + (weight.size(-1),)
    return torch.addmm(bias, x.view(-1, x.size(-1)), weight).view(size_out)


class V4Attention(nn.Module):
    def __init__(self, attn: nn.Module, num_heads: int, n_positions: int, causal: str, unstack: str):
        super().__init__()
        self.c_attn, self.c_proj = attn.c_attn, attn.c_proj
        self.num_heads = num_heads
        self.causal, self.unstack = causal, unstack
        diagonal = -1 if causal == "strict" else 0
        tril = torch.tril(torch.ones((n_positions, n_positions), dtype=torch.bool), diagonal=diagonal)
        self.register_buffer("bias", tril.view(1, 1, n_positions, n_positions), persistent=False)

    def _split_heads(self, tensor):
        head_size = tensor.size(-1) // self.num_heads
        return tensor.view(tensor.size()[:-1] + (self.num_heads, head_size)).permute(0, 2, 1, 3)

    def forward(self, hidden, layer_past, attention_mask):
        hidden_size = hidden.size(-1)
        query, key, value = _conv1d(hidden, self.c_attn.weight, self.c_attn.bias).split(hidden_size, dim=2)
        query, key, value = (self._split_heads(t) for t in (query, key, value))
        if self.unstack == "index":  # Gather(past, 0) / Gather(past, 1)
            past_key, past_value = layer_past[0], layer_past[1]
        else:  # transformers 4.x: tuple unpacking, unbind(0) -> Split + Squeeze
            past_key, past_value = layer_past
        key = torch.cat((past_key, key), dim=-2)
        value = torch.cat((past_value, value), dim=-2)
        weights = torch.matmul(query, key.transpose(-1, -2))
        weights = weights / torch.full([], value.size(-1) ** 0.5, dtype=weights.dtype)
        query_length, key_length = query.size(-2), key.size(-2)
        if self.causal == "from_zero":
            causal_mask = self.bias[:, :, :query_length, :key_length]
        else:
            causal_mask = self.bias[:, :, key_length - query_length : key_length, :key_length]
        mask_value = torch.full([], torch.finfo(weights.dtype).min, dtype=weights.dtype)
        weights = torch.where(causal_mask, weights, mask_value)
        weights = torch.softmax(weights + attention_mask, dim=-1)
        output = torch.matmul(weights, value).permute(0, 2, 1, 3).contiguous()
        output = output.view(output.size()[:-2] + (hidden_size,))
        return _conv1d(output, self.c_proj.weight, self.c_proj.bias), (key, value)


def _gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class V4Block(nn.Module):
    def __init__(self, block: nn.Module, num_heads: int, n_positions: int, causal: str, unstack: str):
        super().__init__()
        self.ln_1, self.ln_2, self.mlp = block.ln_1, block.ln_2, block.mlp
        self.attn = V4Attention(block.attn, num_heads, n_positions, causal, unstack)

    def forward(self, hidden, layer_past, attention_mask):
        attended, present = self.attn(self.ln_1(hidden), layer_past, attention_mask)
        hidden = attended + hidden
        inner = _gelu_new(_conv1d(self.ln_2(hidden), self.mlp.c_fc.weight, self.mlp.c_fc.bias))
        return hidden + _conv1d(inner, self.mlp.c_proj.weight, self.mlp.c_proj.bias), present


class V4Gpt2(nn.Module):
    """(input_ids, position_ids, attention_mask, past_0..past_{L-1}) -> (logits, present_0..present_{L-1}).

    ONNX Runtime's ``MyGPT2LMHeadModel`` IO: stacked past/present per layer, the mask as
    float (``mask_dtype``) of length past + sequence.
    """

    def __init__(self, lm: nn.Module, causal: str = "tril", unstack: str = "unbind"):
        super().__init__()
        if causal not in CAUSAL_FORMS or unstack not in ("unbind", "index"):
            raise ValueError((causal, unstack))
        config = lm.config
        body = lm.transformer
        self.wte, self.wpe, self.ln_f = body.wte, body.wpe, body.ln_f
        self.blocks = nn.ModuleList(V4Block(b, config.n_head, config.n_positions, causal, unstack) for b in body.h)

    def forward(self, input_ids, position_ids, attention_mask, *past):
        batch_size, length = input_ids.size()
        input_ids = input_ids.view(-1, input_ids.size(-1))
        position_ids = position_ids.view(-1, length)
        mask = attention_mask.view(batch_size, -1)[:, None, None, :].to(torch.float32)
        mask = (1.0 - mask) * torch.finfo(torch.float32).min
        hidden = self.wte(input_ids) + self.wpe(position_ids)
        presents = []
        for block, layer_past in zip(self.blocks, past):
            hidden, (key, value) = block(hidden, layer_past, mask)
            presents.append(torch.cat((key.unsqueeze(0), value.unsqueeze(0)), dim=0))
        hidden = self.ln_f(hidden)
        logits = torch.matmul(hidden, self.wte.weight.t())
        return (logits, *presents)


def v4_names(num_layers: int) -> tuple[list[str], list[str]]:
    inputs = ["input_ids", "position_ids", "attention_mask", *(f"past_{i}" for i in range(num_layers))]
    return inputs, ["logits", *(f"present_{i}" for i in range(num_layers))]


def export_v4(module: V4Gpt2, path, *, num_layers: int, num_heads: int, head_size: int, opset: int = 11, int_dtype=torch.int32, mask_dtype=torch.int32):
    """``torch.onnx.export(dynamo=False)`` as ``Gpt2Helper.export_onnx`` calls it.

    Its defaults: opset 11 (14 with external data), int32 ids, positions and mask, an
    example of batch 1, past 1, one new token, these names and dynamic axes.
    """
    inputs, outputs = v4_names(num_layers)
    batch, past, length = 1, 1, 1
    example = (
        torch.randint(0, 10, (batch, length), dtype=int_dtype),
        torch.full((batch, length), past, dtype=int_dtype),
        torch.ones(batch, past + length, dtype=mask_dtype),
        *(torch.rand(2, batch, num_heads, past, head_size) * 2 - 1 for _ in range(num_layers)),
    )
    axes = {
        "input_ids": {0: "batch_size", 1: "seq_len"},
        "position_ids": {0: "batch_size", 1: "seq_len"},
        "attention_mask": {0: "batch_size", 1: "total_seq_len"},
        "logits": {0: "batch_size", 1: "seq_len"},
    }
    for i in range(num_layers):
        axes[f"past_{i}"] = {1: "batch_size", 3: "past_seq_len"}
        axes[f"present_{i}"] = {1: "batch_size", 3: "total_seq_len"}
    torch.onnx.export(
        module.eval(), example, str(path), dynamo=False, opset_version=opset, input_names=inputs,
        output_names=outputs, dynamic_axes=axes, do_constant_folding=True,
    )


def v4_feed(flat_feed: dict[str, np.ndarray], num_layers: int, int_dtype=np.int32, mask_dtype=np.int32) -> dict[str, np.ndarray]:
    """A tfopt_gpt2 step feed (flat ``past_key_values.{i}.key/value``) in convert_to_onnx's layout."""
    feed = {
        "input_ids": flat_feed["input_ids"].astype(int_dtype),
        "position_ids": flat_feed["position_ids"].astype(int_dtype),
        "attention_mask": flat_feed["attention_mask"].astype(mask_dtype),
    }
    for i in range(num_layers):
        feed[f"past_{i}"] = np.stack([flat_feed[f"past_key_values.{i}.key"], flat_feed[f"past_key_values.{i}.value"]])
    return feed


def greedy_v4(session, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int, *, num_layers: int, int_dtype=np.int32, mask_dtype=np.int32):
    """Greedy tokens from a convert_to_onnx-layout decoder session: the prompt with an empty past, then one token a step."""
    past_spec = next(i for i in session.get_inputs() if i.name == "past_0")
    heads, head_size = past_spec.shape[2], past_spec.shape[4]
    batch = input_ids.shape[0]
    past = {f"past_{i}": np.zeros((2, batch, heads, 0, head_size), np.float32) for i in range(num_layers)}
    ids, mask = input_ids, attention_mask.astype(np.int64)
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    tokens = []
    for _ in range(new_tokens):
        feed = {"input_ids": ids.astype(int_dtype), "position_ids": positions.astype(int_dtype), "attention_mask": mask.astype(mask_dtype), **past}
        outputs = session.run(None, feed)
        next_tokens = outputs[0][:, -1, :].argmax(-1).astype(np.int64)
        tokens.append(next_tokens)
        past = {f"past_{i}": outputs[1 + i] for i in range(num_layers)}
        ids = next_tokens[:, None]
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
        positions = mask.sum(axis=1, keepdims=True) - 1
    return np.stack(tokens, axis=1)
