"""The export matrix for the example ViT adapter: every dynamic-shape spelling of the batch axis, fused and compared with torch.

Images have one size, so only the batch axis is dynamic; each cell exports the tiny ViT itself
(tfopt.torch_kit.export_in_form), fuses it with the adapter's own rules and counts, and compares
with torch within 1e-4 on batches of 1 and 3 (the export's own batch only, for static exports).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tfopt_vit
from tfopt.bench import ort_session
from tfopt.graph import encoder_counts, fuse_file
from tfopt.results import ModelInfo, RunContext
from tfopt.torch_kit import SPELLINGS, ExportForm, export_in_form

TOLERANCE = 1e-4
FORMS = [ExportForm(exporter, spelling) for exporter, spellings in SPELLINGS.items() for spelling in spellings]
CELLS = [(form, "sdpa") for form in FORMS] + [(ExportForm("dynamo", "Dim.DYNAMIC", 18), "eager"), (ExportForm("legacy", "dynamic_axes", 14), "eager")]


@pytest.mark.parametrize(("form", "attn"), CELLS, ids=[f"{form.id}-{attn}" for form, attn in CELLS])
def test_export_form_fuses_fully_with_parity(tmp_path, form, attn):
    ctx = RunContext(family="vit", source="tiny-vit", work_dir=tmp_path, options={"attn_implementation": attn})
    model = tfopt_vit.load(ctx)
    config = model.config
    wrapper = tfopt_vit._hidden_states(model)
    rng = np.random.default_rng(0)

    def images(batch):
        return rng.standard_normal((batch, config.num_channels, config.image_size, config.image_size)).astype(np.float32)

    path = tmp_path / "exported.onnx"
    try:
        export_in_form(
            wrapper, (torch.from_numpy(images(2)),), path, form, input_names=["pixel_values"],
            output_names=["last_hidden_state"], axes={"pixel_values": {0: "batch"}},
        )
    except Exception as exc:  # the exporter's limit, not tfopt's: say which
        pytest.skip(f"torch cannot export {form.id}: {str(exc).splitlines()[0][:160]}")
    layers = config.num_hidden_layers
    expected = {**encoder_counts(layers, embed_layer_norm=False), "SkipLayerNormalization": 2 * layers + 1}
    info = ModelInfo("vit", num_layers=layers, expected=expected, rules=[tfopt_vit.POSITION_SKIP_LN])
    fused = fuse_file(path, tmp_path / "optimized.onnx", info)
    assert fused.missing == [], (form.id, fused.missing)
    assert fused.op_counts.get("MultiHeadAttention", 0) == layers
    assert fused.op_counts.get("Softmax", 0) == 0
    session = ort_session(fused.model_path)
    for batch in [2] if form.spelling == "static" else [1, 3]:
        feed = images(batch)
        with torch.inference_mode():
            reference = wrapper(torch.from_numpy(feed)).numpy()
        (actual,) = session.run(None, {"pixel_values": feed})
        assert float(np.abs(actual - reference).max()) <= TOLERANCE, (form.id, batch)
