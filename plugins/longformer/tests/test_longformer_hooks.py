"""The adapter through the host: conformance kit on both targets and precisions, inputs, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from tfopt.errors import TfoptError
from tfopt.plugins import adapter_names
from tfopt.results import RunContext
from tfopt.testing import check_adapter, isolated_plugin_manager


def test_longformer_is_discovered_as_an_adapter(tmp_path):
    assert "longformer" in adapter_names(isolated_plugin_manager(tmp_path))


@pytest.mark.parametrize(
    "options",
    # the CUDA model has no CPU kernel, so it cannot be timed here (the kit wants ort:tfopt timed)
    [{}, {"target": "cuda", "benchmark": False}, {"target": "cuda", "precision": "fp16", "benchmark": False}, {"precision": "int8"}],
    ids=["cpu-fp32", "cuda-fp32", "cuda-fp16", "cpu-int8"],
)
def test_longformer_conforms(tmp_path, options):
    outcome = check_adapter("longformer", options=options, work_dir=tmp_path)
    assert outcome.passed
    report = outcome.report
    assert report["verify"]["reference"].startswith("torch")
    if options.get("target") == "cuda":
        assert "standard-op body" in report["verify"]["reference"]
        assert report["fuse"]["op_counts"]["LongformerAttention"] == 2
    else:
        engines = {row["engine"] for row in report["benchmark"]["rows"]}
        assert {"torch", "torch+extension", "ort:tfopt"} <= engines


def test_dummy_inputs_pad_rows_and_place_global_tokens(tiny):
    from tfopt_longformer.inputs import default_sequence_lengths, dummy_inputs_for

    ctx = RunContext(family="longformer", source="tiny-longformer", work_dir=".", options={})
    feeds = dummy_inputs_for(ctx, None)
    lengths = {f["input_ids"].shape[1] for f in feeds}
    assert lengths == set(default_sequence_lengths(tiny)) and any(s % (2 * tiny.window) for s in lengths) and 1 in lengths
    for f in feeds:
        assert (f["global_attention_mask"][:, 0] == 1).all()  # CLS
        assert not (f["global_attention_mask"] & (f["attention_mask"] == 0)).any()  # never on padding
    batch3 = [f for f in feeds if f["input_ids"].shape == (3, 9)][0]
    assert batch3["attention_mask"][2].sum() < 9  # padded row
    assert batch3["global_attention_mask"][0].sum() == 3  # CLS + 2 random
    assert batch3["global_attention_mask"][1].sum() == 1
    long = dummy_inputs_for(RunContext(family="longformer", source="tiny-longformer", work_dir=".",
                                       options={"batch_sizes": (2,), "sequence_lengths": (4096,)}), None)
    assert long[0]["input_ids"].shape == (2, 4096)


@pytest.mark.parametrize(
    ("options", "source", "message"),
    [
        ({"exporter": "legacy"}, None, "dynamo exporter only"),
        ({"target": "tpu"}, None, "unknown target 'tpu'"),
        ({"sequence_lengths": (5000,)}, None, "exceeds tiny-longformer's maximum of 4096"),
        ({}, "no/such/dir", "no such model directory"),
        ({"target": "cuda", "precision": "int8"}, None, "not offered for the longformer CUDA target"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, options, source, message):
    from tfopt.pipeline import run_pipeline

    ctx = RunContext(family="longformer", source=source, work_dir=tmp_path / "run", options={"benchmark": False, **options})
    with pytest.raises(TfoptError, match=message):
        run_pipeline(isolated_plugin_manager(tmp_path), "longformer", ctx)


def test_directory_source_of_another_family_is_refused(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64).save_pretrained(tmp_path)
    from tfopt_longformer.models import load_source

    with pytest.raises(TfoptError, match="model type 'bert' is not handled by longformer"):
        load_source(str(tmp_path))


def test_directory_source_loads(tmp_path, tiny):
    from tfopt_longformer.models import load_source

    tiny.model.save_pretrained(tmp_path)
    loaded = load_source(str(tmp_path))
    assert loaded.window == 4 and loaded.info.num_layers == 2
    ids = np.arange(3, 20)[None]
    import torch

    with torch.inference_mode():
        a = tiny.model(input_ids=torch.from_numpy(ids)).last_hidden_state
        b = loaded.model(input_ids=torch.from_numpy(ids)).last_hidden_state
    assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_longformer_conforms_at_4096(tmp_path, target):
    """Lengths up to the model's 4096 positions, padded batch, both targets (~40 s each here)."""
    options = {"target": target, "sequence_lengths": (1, 4095, 4096), "batch_sizes": (2,), "benchmark": False}
    assert check_adapter("longformer", options=options, work_dir=tmp_path).passed


def test_unreachable_hub_id_is_one_line_error():
    from tfopt_longformer.models import load_source

    with pytest.raises(TfoptError) as info:  # HF_HUB_OFFLINE=1 (conftest): fails at once, nothing cached
        load_source("allenai/longformer-base-4096")
    assert "allenai/longformer-base-4096" in str(info.value) and "\n" not in str(info.value)
