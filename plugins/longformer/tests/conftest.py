"""Shared fixtures: the tiny Longformer (hidden 32, 2 layers, window 8 = one-sided 4) and its padded feeds."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach for the network

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    from tfopt_longformer.models import load_source

    return load_source("tiny-longformer")


@pytest.fixture(scope="session")
def exported_tiny(tmp_path_factory, tiny):
    """(ctx, ExportResult) of tiny-longformer, exported once per session."""
    from tfopt.results import RunContext
    from tfopt_longformer.export import export_model

    ctx = RunContext(family="longformer", source="tiny-longformer", work_dir=tmp_path_factory.mktemp("export"), options={})
    return ctx, export_model(ctx, tiny)


@pytest.fixture(scope="session")
def fused_tiny(tmp_path_factory, exported_tiny):
    """target -> FuseResult of the tiny export, fused once per session."""
    from tfopt.results import RunContext
    from tfopt_longformer.fuse import fuse_cuda
    from tfopt.graph import fuse_file

    _, exported = exported_tiny
    done = {}

    def get(target: str):
        if target not in done:
            work = tmp_path_factory.mktemp(f"fuse-{target}")
            if target == "cuda":
                ctx = RunContext(family="longformer", source="tiny-longformer", work_dir=work, options={"target": "cuda"})
                done[target] = fuse_cuda(ctx, exported)
            else:
                done[target] = fuse_file(exported.model_path, work / "optimized.onnx", exported.info)
        return done[target]

    return get
