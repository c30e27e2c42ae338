"""What a third party needs for a new encoder family: an export hook and a model type, no rule.

A T5-encoder adapter written against the documented API only (``docs/plugins.md``): it exports,
names the model type, and leaves fuse, verify and benchmark to the built-in default plugin. The
shared plan fuses T5's attention with its bucketed position bias and its RMSNorms; the conformance
kit passes it, counting the primitives left from the written file itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tfopt
from tfopt.graph import read_io_spec
from tfopt.results import ExportResult, ModelInfo, RunContext

torch = pytest.importorskip("torch")  # the TensorFlow deployment has none
transformers = pytest.importorskip("transformers")

LAYERS = 2


class T5EncoderAdapter:
    """The whole adapter: one hook."""

    @tfopt.hookimpl
    def export(self, ctx: RunContext) -> ExportResult:
        from tfopt.torch_kit import quiet_export

        config = transformers.T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=LAYERS, num_heads=4,
                                       relative_attention_num_buckets=8)
        torch.manual_seed(0)
        model = transformers.T5EncoderModel(config).eval()
        path = Path(ctx.work_dir) / "exported.onnx"
        ids, mask = torch.randint(0, 100, (2, 7)), torch.ones(2, 7, dtype=torch.int64)
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
        with quiet_export():  # torch 2.13's dynamo exporter cannot export T5's attention views: the legacy one
            torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17, dynamic_axes=axes,
                              input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"])
        info = ModelInfo(model_type="t5", num_layers=LAYERS)
        return ExportResult(model_path=path, io=read_io_spec(path), info=info, exporter="legacy")


def test_a_t5_encoder_adapter_with_no_rule_of_its_own_passes_the_kit(tmp_path):
    from tfopt.plugins import build_plugin_manager
    from tfopt.testing import check_adapter

    pm = build_plugin_manager(entry_points=[])
    pm.register(T5EncoderAdapter(), name="t5_encoder")
    outcome = check_adapter("t5_encoder", pm=pm, work_dir=tmp_path, options={"benchmark": False})
    fused = outcome.report["fuse"]
    assert fused["leftover"] == {} and fused["missing"] == []
    assert fused["op_counts"]["Attention"] == LAYERS
    assert fused["op_counts"]["SkipSimplifiedLayerNormalization"] == 2 * LAYERS
