"""vision through the host's whole pipeline, one tiny model per family: the conformance kit, the
fused counts against tfopt's model-type table, parity with torch.

Each family's run happens once per session (``family_run``) and serves every test that reads it.
"""

from __future__ import annotations

import pytest

from tfopt.graph import expected_counts
from tfopt.plugins import adapter_names
from tfopt.results import ModelInfo
from tfopt.testing import check_adapter, isolated_plugin_manager

FAMILIES = {  # tiny source -> (tfopt model type, layers: Swin's blocks, exporter it gets by default)
    "tiny-vit": ("vit", 2, "dynamo"),
    "tiny-deit": ("deit", 2, "dynamo"),
    "tiny-dinov2": ("dinov2", 2, "dynamo"),
    "tiny-swin": ("swin", 4, "legacy"),  # torch 2.13's dynamo exporter fails on Swin's window views
    "tiny-clip-vision": ("clip", 2, "dynamo"),
    "tiny-siglip-vision": ("siglip", 2, "dynamo"),
}
ATTENTION = {"swin": "Attention", "clip": "MultiHeadAttention"}  # ViT-like types: MultiHeadAttention


@pytest.fixture(scope="session")
def family_run(tmp_path_factory):
    done = {}

    def run(source: str):
        if source not in done:
            done[source] = check_adapter("vision", source=source, work_dir=tmp_path_factory.mktemp(source))
        return done[source]

    return run


def found(op_counts: dict[str, int], key: str) -> int:
    return sum(op_counts.get(op, 0) for op in key.split("|"))


def test_vision_is_discovered_as_an_adapter(tmp_path):
    assert "vision" in adapter_names(isolated_plugin_manager(tmp_path))


@pytest.mark.parametrize("source", sorted(FAMILIES))
def test_each_family_conforms_fuses_fully_and_matches_torch(family_run, source):
    model_type, layers, exporter = FAMILIES[source]
    report = family_run(source).report
    assert report["status"] == "passed"
    assert report["export"]["exporter"] == exporter
    assert report["export"]["info"]["model_type"] == model_type
    fuse = report["fuse"]
    assert fuse["missing"] == [] and fuse["leftover"] == {}
    assert "Softmax" not in fuse["op_counts"]
    assert fuse["op_counts"].get(ATTENTION.get(model_type, "MultiHeadAttention"), 0) == layers
    verify = report["verify"]
    assert verify["reference"] == "torch" and verify["passed"]
    assert verify["overall"]["max_abs"] <= 1e-4
    assert sorted(case["batch_size"] for case in verify["cases"]) == [1, 2, 3]
    assert {row["engine"] for row in report["benchmark"]["rows"]} == {"torch", "ort:raw", "ort:tfopt"}


@pytest.mark.parametrize("source", sorted(FAMILIES))
def test_fused_counts_match_the_model_type_table(family_run, source):
    """The table's counts (tfopt.graph.MODEL_TYPES) are met; where the adapter states exact ones
    (Swin, CLIP: the table's are a lower bound), the graph holds exactly those."""
    model_type, layers, _ = FAMILIES[source]
    report = family_run(source).report
    op_counts = report["fuse"]["op_counts"]
    table = expected_counts(ModelInfo(model_type, num_layers=layers), layers)
    assert table, model_type
    for key, count in table.items():
        assert found(op_counts, key) >= count, (key, op_counts)
    stated = report["fuse"]["expected"]
    assert set(stated) == set(table)
    assert {key: found(op_counts, key) for key in stated} == stated
    if model_type == "swin":  # 2 blocks x 2 stages: 2L - stages + 1 norms after a residual
        assert stated["SkipLayerNormalization"] == 2 * 4 - 2 + 1
    elif model_type == "clip":  # pre_layrnorm: layer 0's first norm reads no residual
        assert stated["SkipLayerNormalization"] == 2 * 2 - 1
    else:
        assert stated == table


def test_legacy_exporter_with_eager_attention(tmp_path):
    outcome = check_adapter(
        "vision", source="tiny-clip-vision", options={"exporter": "legacy", "attn_implementation": "eager"}, work_dir=tmp_path
    )
    report = outcome.report
    assert report["export"]["exporter"] == "legacy"
    assert report["fuse"]["op_counts"]["MultiHeadAttention"] == 2 and report["fuse"]["leftover"] == {}
    assert report["verify"]["overall"]["max_abs"] <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_converted_precisions_verify_against_torch(tmp_path, precision):
    outcome = check_adapter("vision", source="tiny-siglip-vision", options={"precision": precision}, work_dir=tmp_path)
    assert outcome.report["verify"]["precision"] == precision and outcome.passed
