"""ONNX Runtime sessions whose load failures are one-line errors (a truncated file is user input, not a bug)."""

from __future__ import annotations

from pathlib import Path

from tfopt.bench import ort_session
from tfopt.errors import TfoptError

from .models import first_line


def load_session(model_path: str | Path):
    try:
        return ort_session(model_path)
    except Exception as exc:
        raise TfoptError(f"{model_path}: ONNX Runtime cannot load it ({first_line(exc)})") from None
