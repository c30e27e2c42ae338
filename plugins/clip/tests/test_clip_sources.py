"""Where the model comes from (a local directory, refusals in one line, fixed-seed tiny models),
the dummy feeds, and the similarity check's failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from tfopt.errors import TfoptError
from tfopt.plugins import adapter_caller
from tfopt.testing import check_adapter, run_context, tfopt_pm  # noqa: F401 (pytest fixtures)
from tfopt_clip.export import SplitHeadAttention
from tfopt_clip.models import TINY_CONFIGS, load_source, random_model
from tfopt_clip.verify import similarity


def test_a_local_directory_runs_through_the_pipeline(tmp_path):
    directory = tmp_path / "siglip"
    random_model(TINY_CONFIGS["tiny-siglip"](), seed=7).save_pretrained(directory)
    report = check_adapter("clip", source=str(directory), work_dir=tmp_path / "run", options={"no_benchmark": True}).report
    assert report["source"] == str(directory) and report["export"]["info"]["model_type"] == "siglip"
    assert report["status"] == "passed" and report["fuse"]["leftover"] == {}
    assert report["verify"]["overall"]["max_abs"] <= 1e-4 and report["verify"]["top1_agreement"] == 1.0


def test_other_sources_are_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(TfoptError, match="'clip_vision_model' is not handled by clip .*--plugin vision"):
        load_source(str(tmp_path))
    with pytest.raises(TfoptError, match="not a directory, not a built-in name"):
        load_source("no-such-org/no-such-model")  # HF_HUB_OFFLINE (conftest)
    with pytest.raises(TfoptError, match="unknown attn_implementation"):
        load_source("tiny-clip", attn_implementation="flash")


def test_tiny_models_are_the_same_every_time_and_nothing_is_constant():
    first, second = load_source("tiny-siglip").model, load_source("tiny-siglip").model
    for (name, a), b in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(a, b), name
        if a.numel() > 1:
            assert a.std() > 0, name


def test_the_head_attention_export_form_computes_what_nn_multihead_attention_does():
    head = load_source("tiny-siglip").model.vision_model.head
    patches = torch.randn(3, 16, 48)
    with torch.inference_mode():
        expected = head(patches)
        probe = head.probe.repeat(3, 1, 1)
        got = SplitHeadAttention(head.attention)(probe, patches, patches)[0]
        assert torch.allclose(head.attention(probe, patches, patches)[0], got, atol=1e-6)
    assert expected.shape == (3, 48)


def test_dummy_feeds_pad_clip_rows_and_pad_siglip_to_max_length(tfopt_pm, run_context):
    make = adapter_caller(tfopt_pm, "clip", "make_dummy_inputs")
    feeds = make(ctx=run_context("clip", source="tiny-clip"), exported=None)
    shapes = [(f["input_ids"].shape, f["pixel_values"].shape[0]) for f in feeds]
    assert shapes == [((1, 8), 1), ((3, 8), 2), ((2, 16), 4)]
    ids, mask = feeds[1]["input_ids"], feeds[1]["attention_mask"]
    lengths = mask.sum(axis=1)
    assert list(lengths) == [8, 6, 3]  # padded rows
    assert all(ids[row, length - 1] == 98 and ids[row, 0] == 0 for row, length in enumerate(lengths))
    assert all((ids[row, length:] == 1).all() for row, length in enumerate(lengths))
    siglip = make(ctx=run_context("clip", source="tiny-siglip", batch_sizes=[2], sequence_lengths=[12]), exported=None)
    assert list(siglip[0]) == ["input_ids", "pixel_values"]
    assert siglip[0]["input_ids"].shape == (3, 12) and siglip[0]["pixel_values"].shape == (2, 3, 32, 32)
    assert (siglip[0]["input_ids"][:, -1] == 1).all()  # max_length padding: the pooled last position is a pad
    with pytest.raises(TfoptError, match="exceeds"):
        make(ctx=run_context("clip", source="tiny-clip", sequence_lengths=[64]), exported=None)


def test_similarity_finds_a_turned_row_and_a_different_pick():
    rng = np.random.default_rng(0)
    text, image = rng.standard_normal((3, 8)), rng.standard_normal((2, 8))
    logits = image @ text.T
    same = similarity([text, image, logits], [text, image, logits])
    assert same["min_cosine"] > 0.9999999 and same["argmax_agreement"] == 1.0
    turned = text.copy()
    turned[1] += 0.05 * rng.standard_normal(8)
    swapped = logits[:, ::-1].copy()
    moved = similarity([text, image, logits], [turned, image, swapped])
    assert moved["min_cosine"] < 0.9999 and moved["argmax_agreement"] < 1.0
