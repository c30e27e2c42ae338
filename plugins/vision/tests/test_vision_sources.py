"""Where the model comes from: a local Hugging Face directory (one model, or a two-tower checkpoint),
refusals in one line, fixed-seed tiny models, dummy inputs, Swin's exporter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from tfopt.errors import TfoptError
from tfopt.plugins import adapter_caller
from tfopt.testing import check_adapter, run_context, tfopt_pm  # noqa: F401 (pytest fixtures)
from tfopt_vision.models import TINY_CONFIGS, load_source, random_model

TOWER = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TEXT = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)


def test_a_local_directory_runs_through_the_pipeline(tmp_path):
    directory = tmp_path / "deit"
    random_model(TINY_CONFIGS["tiny-deit"](), seed=7).save_pretrained(directory)
    outcome = check_adapter("vision", source=str(directory), work_dir=tmp_path / "run")
    report = outcome.report
    assert report["source"] == str(directory) and report["export"]["info"]["model_type"] == "deit"
    assert report["fuse"]["op_counts"]["MultiHeadAttention"] == 2
    assert report["verify"]["overall"]["max_abs"] <= 1e-4


@pytest.mark.parametrize(
    ("config_class", "model_class", "model_type"),
    [(transformers.CLIPConfig, transformers.CLIPModel, "clip"), (transformers.SiglipConfig, transformers.SiglipModel, "siglip")],
)
def test_a_two_tower_checkpoint_loads_its_vision_tower(tmp_path, config_class, model_class, model_type):
    torch.manual_seed(0)
    full = model_class(config_class(text_config=TEXT, vision_config=TOWER)).eval()
    full.save_pretrained(tmp_path)
    source = load_source(str(tmp_path))
    assert source.info.model_type == model_type and source.image_size == 32
    image = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = full.vision_model(pixel_values=image).last_hidden_state
        assert torch.equal(source.model(pixel_values=image).last_hidden_state, expected)


def test_other_sources_are_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TfoptError, match="model type 'bert' is not handled by vision"):
        load_source(str(tmp_path))
    with pytest.raises(TfoptError, match="no config.json"):
        load_source(str(tmp_path.parent))
    with pytest.raises(TfoptError, match="not a directory, not a built-in name"):
        load_source("no-such-org/no-such-model")  # HF_HUB_OFFLINE (conftest)
    with pytest.raises(TfoptError, match="unknown attn_implementation"):
        load_source("tiny-vit", attn_implementation="flash")


def test_tiny_models_are_the_same_every_time_and_no_bias_table_is_constant():
    first, second = load_source("tiny-swin").model, load_source("tiny-swin").model
    for (name, a), b in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(a, b), name
        if a.numel() > 1:
            assert a.std() > 0, name  # e.g. relative_position_bias_table, biases, LayerNorm weights


def test_dummy_inputs_are_batch_sizes_at_the_image_size(tfopt_pm, run_context):
    make = adapter_caller(tfopt_pm, "vision", "make_dummy_inputs")
    feeds = make(ctx=run_context("vision", source="tiny-dinov2"), exported=None)
    assert [feed["pixel_values"].shape for feed in feeds] == [(1, 3, 32, 32), (2, 3, 32, 32), (3, 3, 32, 32)]
    assert all(feed["pixel_values"].dtype == np.float32 for feed in feeds)
    feeds = make(ctx=run_context("vision", source="tiny-vit", batch_sizes=[4]), exported=None)
    assert [feed["pixel_values"].shape[0] for feed in feeds] == [4]
    with pytest.raises(TfoptError, match="sequence_lengths does not apply"):
        make(ctx=run_context("vision", source="tiny-vit", sequence_lengths=[8]), exported=None)


def test_the_default_source_is_tiny_vit(tfopt_pm, run_context):
    ctx = run_context("vision", source=None)
    exported = adapter_caller(tfopt_pm, "vision", "export")(ctx=ctx)
    assert exported.info.model_type == "vit" and exported.io.dynamic_axes["pixel_values"] == {0: "batch"}


@pytest.mark.slow
def test_swin_with_the_dynamo_exporter_asked_for_says_to_use_legacy(tfopt_pm, run_context):
    ctx = run_context("vision", source="tiny-swin", exporter="dynamo")
    with pytest.raises(TfoptError, match="use --exporter legacy"):
        adapter_caller(tfopt_pm, "vision", "export")(ctx=ctx)
    assert not (ctx.work_dir / "exported.onnx").exists()
