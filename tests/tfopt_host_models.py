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


def perturbed(model):
    """``model`` in eval mode with +0.02 randn on every parameter: default inits leave biases, norms and
    bias tables constant (Swin's folds away), which hides what a rule must keep apart."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model.eval()


def text_encoder(model):
    """A Hugging Face text encoder as ``(input_ids, attention_mask) -> last hidden state`` (named inputs:
    torch.export matches dynamic_shapes to them)."""
    import torch

    class FirstOutput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]

    return FirstOutput(model).eval()


def export_text_encoder(model, path: Path, exporter: str) -> Path:
    """Export as a user would: dynamo with ``Dim.DYNAMIC`` batch and sequence, or the legacy exporter at opset 17."""
    import torch

    from tfopt.torch_kit import quiet_export

    ids, mask = torch.randint(3, 100, (2, 7)), torch.ones(2, 7, dtype=torch.int64)
    names = dict(input_names=["input_ids", "attention_mask"], output_names=["out"])
    with quiet_export():
        if exporter == "dynamo":
            dynamic = torch.export.Dim.DYNAMIC
            torch.onnx.export(model, (ids, mask), str(path), dynamo=True, dynamic_shapes=({0: dynamic, 1: dynamic},) * 2, **names)
        else:
            axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
            torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17, dynamic_axes=axes, **names)
    return path


def assert_text_encoder_matches_torch(model, onnx_path: Path, shapes=((1, 5), (3, 9)), atol: float = 1e-5, seed: int = 1) -> None:
    """ONNX Runtime on ``onnx_path`` against ``model`` at each (batch, sequence), the last row padded by 3;
    real positions only (padded ones hold whatever each implementation leaves there)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    for batch, sequence in shapes:
        ids = torch.randint(3, 100, (batch, sequence), generator=generator)
        mask = torch.ones(batch, sequence, dtype=torch.int64)
        mask[-1, sequence - 3:] = 0
        with torch.no_grad():
            expected = model(ids, mask).numpy()
        actual = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        real = mask.numpy().astype(bool)
        np.testing.assert_allclose(actual[real], expected[real], atol=atol, rtol=0)
