"""Telling a Hugging Face hub id from a local path, and whether the hub may be asked at all.

Shared by the PyTorch adapters; nothing here imports huggingface_hub until it is called.
"""

from __future__ import annotations

import os
import re

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` or ``name``, and not a model file name."""
    return bool(_HUB_ID.match(source)) and not source.endswith((".onnx", ".json"))


def hub_offline() -> bool:
    """True when Hugging Face's offline switch is on (checked at call time, not at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import is_offline_mode
    except ImportError:
        return False
    return is_offline_mode()
