"""Tiny models the host tests share (torch and transformers imported only when one is built)."""

from __future__ import annotations

import warnings
from pathlib import Path

HEADS, HIDDEN, LAYERS = 4, 32, 2  # tiny BERT's shape


def export_tiny_bert(
    path: Path, *, hidden: int = HIDDEN, heads: int = HEADS, layers: int = LAYERS, vocab: int = 64, pooler: bool = True
) -> Path:
    """A small BERT (2 layers, hidden 32 by default) exported with the legacy exporter and eager
    attention (the form ORT's tool also fuses); 1-D parameters perturbed so none are equal."""
    import torch
    import transformers

    config = transformers.BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, max_position_embeddings=32, attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config, add_pooling_layer=pooler).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:  # random-init biases are all equal; make every one distinct
                parameter.add_(torch.randn_like(parameter) * 0.1)

    class HiddenStates(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = (torch.randint(0, vocab, (2, 8)), torch.ones(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            HiddenStates(model).eval(), example, str(path), dynamo=False, opset_version=17, input_names=names,
            output_names=["last_hidden_state"], dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names},
        )
    return path
