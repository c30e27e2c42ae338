"""Helpers shared by the PyTorch-family adapters (bert_pt, gpt2, and third-party ones).

torch and transformers are imported inside the functions: the host itself runs without
them (the TF deployment has neither).
"""

from __future__ import annotations

import contextlib
import inspect

from .errors import TfoptError
from .results import RunContext

EXPORTERS = ("dynamo", "legacy")


def default_exporter() -> str:
    """Whatever torch.onnx.export does when not told (dynamo since torch 2.9)."""
    import torch

    dynamo = inspect.signature(torch.onnx.export).parameters["dynamo"].default
    return "dynamo" if dynamo else "legacy"


def chosen_exporter(ctx: RunContext) -> str:
    """``ctx.options['exporter']``, else torch's default; anything else is a one-line error."""
    exporter = ctx.option("exporter") or default_exporter()
    if exporter not in EXPORTERS:
        raise TfoptError(f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    return exporter


@contextlib.contextmanager
def no_progress_bar():
    """Loading a checkpoint takes a second; transformers' "Loading weights" bar is noise in tfopt's output."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
