"""bert_pt through the host's whole pipeline (discovery, every stage, report): the adapter conformance kit."""

from __future__ import annotations

import pytest

from tfopt.plugins import adapter_names
from tfopt.testing import check_adapter, isolated_plugin_manager


def test_bert_pt_is_discovered_as_an_adapter(tmp_path):
    assert "bert_pt" in adapter_names(isolated_plugin_manager(tmp_path))


# Every family through the whole pipeline once in CI (the exporters alternate); -m slow: the other exporter too.
CONFORMANCE = [
    ("tiny-roberta", "legacy"), ("tiny-albert", "dynamo"),
    ("tiny-electra", "dynamo"), ("tiny-xlm-roberta", "legacy"), ("tiny-mpnet", "legacy"),
    ("tiny-deberta-v2", "dynamo"), ("tiny-deberta-v3", "legacy"), ("tiny-modernbert", "dynamo"),
]
OTHER_EXPORTER = {"dynamo": "legacy", "legacy": "dynamo"}
CASES = [
    *CONFORMANCE,
    *[pytest.param(source, OTHER_EXPORTER[exporter], marks=pytest.mark.slow) for source, exporter in CONFORMANCE[2:]],
]


@pytest.mark.parametrize(("source", "exporter"), CASES)
def test_bert_pt_conforms(tmp_path, source, exporter):
    outcome = check_adapter("bert_pt", source=source, options={"exporter": exporter}, work_dir=tmp_path)
    assert outcome.passed
    # the adapter's own stages ran, not the generic defaults: torch is the reference and an engine
    assert outcome.report["verify"]["reference"] == "torch"
    assert "torch" in {row["engine"] for row in outcome.report["benchmark"]["rows"]}
