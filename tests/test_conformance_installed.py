"""Cross-plugin: every installed adapter we know a tiny model for passes the conformance kit."""

from __future__ import annotations

import pytest

from tfopt.testing import check_adapter, isolated_plugin_manager

# adapter -> a built-in tiny source that exports in seconds
TINY_SOURCES = {"bert_pt": "tiny-bert"}


@pytest.mark.parametrize("adapter", sorted(TINY_SOURCES))
def test_installed_adapter_conforms(adapter, tmp_path):
    pm = isolated_plugin_manager(tmp_path)
    record = pm.records.get(adapter)
    if record is None or record.status != "active":
        pytest.skip(f"{adapter} is not installed or does not load here")
    outcome = check_adapter(adapter, source=TINY_SOURCES[adapter], options={"exporter": "legacy"}, work_dir=tmp_path, pm=pm)
    assert outcome.report["fuse"]["missing"] == []
