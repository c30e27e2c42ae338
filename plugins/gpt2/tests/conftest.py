"""Shared fixtures: each tiny model exported once per session, per exporter.

Export is the slow step (the dynamo exporter takes ~5 s per tiny GPT-2 here); the
export, verify, generation and fusion tests all start from the same files.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach for the network

import pytest  # noqa: E402

from tfopt.testing import one_torch_thread  # noqa: E402,F401 (autouse: one torch thread per module)

from gpt2_cases import make_ctx  # noqa: E402


@pytest.fixture(scope="session")
def exported_variant(tmp_path_factory):
    """(model, exporter, attn) -> (ctx, ExportResult), exported on first request only."""
    from tfopt_gpt2.export import export_source

    done = {}

    def get(model: str, exporter: str, attn: str = "sdpa"):
        key = (model, exporter, attn)
        if key not in done:
            work_dir = tmp_path_factory.mktemp("-".join(key))
            ctx = make_ctx(work_dir, model, exporter=exporter, attn_implementation=attn)
            done[key] = (ctx, export_source(ctx))
        return done[key]

    return get
