"""Shared fixtures: every tiny model exported once per session, in each exporter/attention variant.

Export is the slow step (the dynamo exporter takes ~3 s per tiny model here), and both
the export tests and the fusion matrix need all 16 variants.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach for the network

import pytest  # noqa: E402

from bert_pt_cases import make_ctx  # noqa: E402


@pytest.fixture(scope="session")
def exported_variant(tmp_path_factory):
    """(model, exporter, attn) -> (ctx, ExportResult), exported on first request only."""
    from tfopt_bert_pt.export import export_source

    done = {}

    def get(model: str, exporter: str, attn: str):
        key = (model, exporter, attn)
        if key not in done:
            work_dir = tmp_path_factory.mktemp("-".join(key))
            ctx = make_ctx(work_dir, model, exporter=exporter, attn_implementation=attn)
            done[key] = (ctx, export_source(ctx))
        return done[key]

    return get
