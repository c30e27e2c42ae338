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
