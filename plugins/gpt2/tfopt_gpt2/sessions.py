"""Running ONNX Runtime sessions with one-line errors (a graph ORT cannot run is user input, not a bug).

Loading goes through :func:`tfopt.bench.ort_session`, which already reports load failures in one line.
"""

from __future__ import annotations

from pathlib import Path

from tfopt.errors import TfoptError, first_line



def run_session(session, names: list[str], feed: dict, model_path: str | Path) -> list:
    """``session.run`` with a one-line error naming the model (a wrong graph is user input too)."""
    try:
        return session.run(names, feed)
    except Exception as exc:
        raise TfoptError(f"{model_path}: ONNX Runtime failed to run it ({first_line(exc)})") from None
