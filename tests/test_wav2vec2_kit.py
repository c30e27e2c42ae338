"""A Hugging Face Wav2Vec2Model (tiny, from a config) through the conformance kit, as an outside author
writes it from docs/plugins.md: samples sized by ModelInfo.axis_sizes, counts by encoder_counts' extras.

Both layouts: base (post-LN, group norm; the encoder's LayerNorm follows the positional conv's Add)
and stable (pre-LN, layer norm; a final LayerNorm after the last residual). Each is one SkipLayerNorm
beyond 2L; the Gelus are L feed-forwards + 2 conv front-end layers + 1 positional conv.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tfopt import hookimpl
from tfopt.graph import encoder_counts, read_io_spec
from tfopt.results import ExportResult, ModelInfo
from tfopt.testing import check_adapter, isolated_plugin_manager

pytest.importorskip("torch")  # absent from the TensorFlow deployment
pytest.importorskip("transformers")

LAYERS = 2
CONV_LAYERS = 2


class Wav2Vec2Adapter:
    def __init__(self, stable: bool):
        self.stable = stable

    @hookimpl
    def export(self, ctx) -> ExportResult:
        import torch
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        from tfopt.torch_kit import quiet_export

        layout = dict(feat_extract_norm="layer", do_stable_layer_norm=True) if self.stable else {}
        config = Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
            conv_dim=(32,) * CONV_LAYERS, conv_stride=(5, 2), conv_kernel=(10, 3), conv_bias=True,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, **layout,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = Wav2Vec2Model(config).eval()

        class Hidden(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_values):
                return self.model(input_values=input_values).last_hidden_state

        path = Path(ctx.work_dir) / "exported.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        axes = {"input_values": {0: "batch", 1: "samples"}, "last_hidden_state": {0: "batch", 1: "frames"}}
        with quiet_export():
            torch.onnx.export(Hidden().eval(), (torch.zeros(2, 800),), str(path), dynamo=False, opset_version=17,
                              input_names=["input_values"], output_names=["last_hidden_state"], dynamic_axes=axes)
        expected = encoder_counts(LAYERS, embed_layer_norm=False, extra_skip_layer_norms=1, extra_gelus=CONV_LAYERS + 1)
        info = ModelInfo("wav2vec2", 4, 32, LAYERS, expected=expected, axis_sizes={"samples": [400, 800]})
        return ExportResult(model_path=path, io=read_io_spec(path), info=info, exporter="legacy")


@pytest.mark.parametrize("stable", [False, True], ids=["post-ln", "pre-ln"])
def test_wav2vec2_fully_fused_and_validated_on_its_own_sizes(tmp_path, stable):
    pm = isolated_plugin_manager(tmp_path, plugins={"w2v": Wav2Vec2Adapter(stable)})
    report = check_adapter("w2v", options={"benchmark": False}, work_dir=tmp_path, pm=pm).report
    counts = report["fuse"]["op_counts"]
    assert counts["SkipLayerNormalization"] == 2 * LAYERS + 1 and counts["MultiHeadAttention"] == LAYERS
    assert counts.get("BiasGelu", 0) + counts.get("Gelu", 0) == LAYERS + CONV_LAYERS + 1 and "Softmax" not in counts
    assert report["fuse"]["validation"]["feeds"] == 2  # validation compared numbers at 400 and 800 samples
    assert sorted({feed["input_values"]["shape"][1] for feed in report["make_dummy_inputs"]}) == [400, 800]
