"""clip through the host's whole pipeline, tiny CLIP and SigLIP: the conformance kit, the exact fused
counts, no primitive left, raw parity and image-text similarity against torch.

Each family's run happens once per session (``family_run``) and serves every test that reads it.
"""

from __future__ import annotations

import pytest

from tfopt.plugins import adapter_names
from tfopt.testing import check_adapter, isolated_plugin_manager

# Measured on the dynamo export of the tiny models (2 text + 2 vision layers), stated from the config
# (tfopt_clip.models.expected_counts_of): the graph holds exactly these.
EXACT = {
    "tiny-clip": {"EmbedLayerNormalization": 1, "Attention": 2, "MultiHeadAttention": 2,
                  "SkipLayerNormalization": 2 * 2 + 2 * 2 - 1, "QuickGelu": 4},
    "tiny-siglip": {"EmbedLayerNormalization": 1, "Attention|MultiHeadAttention": 2 + 2 + 1,  # + the pooling head
                    "SkipLayerNormalization": 2 * 2 + 2 * 2, "FastGelu": 4 + 1},
}
INPUTS = {"tiny-clip": ["input_ids", "attention_mask", "pixel_values"], "tiny-siglip": ["input_ids", "pixel_values"]}


@pytest.fixture(scope="session")
def family_run(tmp_path_factory):
    done = {}

    def run(source: str):
        if source not in done:
            done[source] = check_adapter("clip", source=source, work_dir=tmp_path_factory.mktemp(source))
        return done[source]

    return run


def found(op_counts: dict[str, int], key: str) -> int:
    return sum(op_counts.get(op, 0) for op in key.split("|"))


def test_clip_is_discovered_as_an_adapter(tmp_path):
    assert "clip" in adapter_names(isolated_plugin_manager(tmp_path))


@pytest.mark.parametrize("source", sorted(EXACT))
def test_both_towers_export_into_one_graph_with_distinct_batch_axes(family_run, source):
    export = family_run(source).report["export"]
    assert export["exporter"] == "dynamo"
    io = export["io"]
    assert list(io["inputs"]) == INPUTS[source]
    assert io["outputs"] == ["text_embeds", "image_embeds", "logits_per_image"]
    axes = io["dynamic_axes"]
    assert axes["input_ids"] == {"0": "text_batch", "1": "sequence"} and axes["pixel_values"] == {"0": "image_batch"}
    assert axes["logits_per_image"] == {"0": "image_batch", "1": "text_batch"}


@pytest.mark.parametrize("source", sorted(EXACT))
def test_each_family_conforms_fuses_exactly_and_leaves_nothing(family_run, source):
    report = family_run(source).report
    assert report["status"] == "passed"
    fuse = report["fuse"]
    assert fuse["missing"] == [] and fuse["leftover"] == {}
    assert "Softmax" not in fuse["op_counts"]
    assert fuse["expected"] == EXACT[source]
    assert {key: found(fuse["op_counts"], key) for key in EXACT[source]} == EXACT[source]
    assert {row["engine"] for row in report["benchmark"]["rows"]} == {"torch", "ort:raw", "ort:tfopt"}


@pytest.mark.parametrize("source", sorted(EXACT))
def test_parity_and_image_text_similarity_against_torch(family_run, source):
    verify = family_run(source).report["verify"]
    assert verify["reference"] == "torch" and verify["passed"] and verify["failure"] is None
    assert verify["overall"]["max_abs"] <= 1e-4
    assert verify["top1_agreement"] == 1.0
    cases = verify["cases"]
    assert {case["output"] for case in cases} == {"text_embeds", "image_embeds", "logits_per_image"}
    assert {(c["batch_size"], c["image_batch"], c["sequence_length"]) for c in cases} == {(1, 1, 8), (3, 2, 8), (2, 4, 16)}
    assert min(case["min_cosine"] for case in cases) >= 0.9999
    assert all(case["argmax_agreement"] == 1.0 for case in cases)


def test_legacy_exporter_on_clip(tmp_path):
    report = check_adapter("clip", source="tiny-clip", options={"exporter": "legacy"}, work_dir=tmp_path).report
    assert report["export"]["exporter"] == "legacy" and report["status"] == "passed"
    fuse = report["fuse"]
    assert fuse["leftover"] == {} and fuse["missing"] == []
    counts = {key: found(fuse["op_counts"], key) for key in EXACT["tiny-clip"]}
    # the legacy export also fuses the vision tower's pre_layrnorm with the position table: one more
    assert counts == {**EXACT["tiny-clip"], "SkipLayerNormalization": 8}
    assert report["verify"]["overall"]["max_abs"] <= 1e-4 and report["verify"]["top1_agreement"] == 1.0


def test_legacy_exporter_on_siglip_fuses_the_pooling_head_too(tmp_path):
    """TorchScript computes the head attention's scale from Shape(q)[-1:]; once that folds to the head
    size (tfopt.graph.passes.static_shape_slices) the head fuses like the towers' attentions."""
    report = check_adapter("clip", source="tiny-siglip", options={"exporter": "legacy"}, work_dir=tmp_path).report
    fuse = report["fuse"]
    assert report["status"] == "passed" and fuse["leftover"] == {} and fuse["missing"] == []
    assert found(fuse["op_counts"], "Attention|MultiHeadAttention") == EXACT["tiny-siglip"]["Attention|MultiHeadAttention"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_converted_precisions_verify_against_torch(tmp_path, precision):
    outcome = check_adapter("clip", source="tiny-clip", options={"precision": precision}, work_dir=tmp_path)
    assert outcome.report["verify"]["precision"] == precision and outcome.passed
