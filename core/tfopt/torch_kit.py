"""Helpers shared by the PyTorch-family adapters (bert_pt, gpt2, and third-party ones).

torch and transformers are imported inside the functions: the host itself runs without
them (the TF deployment has neither).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import sys
import warnings

from .console import is_verbose
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


@contextlib.contextmanager
def quiet_export():
    """Silence the exporters' progress prints, deprecation warnings and log lines; errors still raise.

    Under ``tfopt -v`` nothing is silenced, and the exporters' prints go to stderr (stdout is for results).
    """
    if is_verbose():
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def perturb_vector_params(model, *, seed: int = 0, scale: float = 0.02) -> None:
    """Add small noise to every 1-D parameter (biases, LayerNorm weights) of a torch module.

    Random init leaves them all zeros or ones; the dynamo exporter then de-duplicates
    the identical tensors into one shared initializer, which no real checkpoint has
    and which hides fusion bugs that pick up the wrong bias.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
