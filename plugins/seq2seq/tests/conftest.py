"""Tiny encoder-decoder models only; no network; one torch thread on a shared 2-core machine."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["HF_HUB_OFFLINE"] = "1"

from tfopt.testing import one_torch_thread  # noqa: E402,F401 (autouse: one torch thread per module)
