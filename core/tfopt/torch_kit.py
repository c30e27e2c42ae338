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
from dataclasses import dataclass
from typing import Any

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


def export_staged(path, name: str, exporter: str, export, check=None) -> None:
    """Write an export to ``path`` (and its ``.data`` beside it) only once it is complete and checked.

    ``export(staged_path) -> Path`` runs the exporter quietly into a scratch directory beside
    ``path`` and returns the file to keep (it may post-process the raw export into another);
    ``check(file)`` may raise a one-line TfoptError. An exporter failure becomes one line naming
    ``name`` and ``exporter``; whatever happens, the scratch directory is removed and nothing
    half-written appears at ``path``.
    """
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from .errors import first_line

    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with quiet_export():
            try:
                kept = Path(export(staging / path.name))
            except TfoptError:
                raise
            except Exception as exc:
                raise TfoptError(f"{name}: the {exporter} exporter failed ({first_line(exc)})") from None
        if check is not None:
            check(kept)
        data = kept.with_name(kept.name + ".data")
        if data.exists():  # external data is referenced by file name, so it keeps its name
            os.replace(data, path.with_name(data.name))
        os.replace(kept, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


# How users spell dynamic shapes when they export themselves: the export matrix the fusion
# rules are tested on (each family's tests/test_export_forms.py). A rule that only fuses the
# adapter's own spelling fails there.
SPELLINGS = {
    "dynamo": ("Dim.DYNAMIC", "Dim.AUTO", "named", "named-distinct", "bounded", "static"),
    "legacy": ("dynamic_axes", "dynamic_axes-distinct", "static"),
}


@dataclass(frozen=True)
class ExportForm:
    """One way of exporting: exporter, dynamic-shape spelling (:data:`SPELLINGS`), opset (None: the exporter's default)."""

    exporter: str
    spelling: str
    opset: int | None = None

    @property
    def id(self) -> str:
        return f"{self.exporter}-{self.spelling}" + (f"-opset{self.opset}" if self.opset else "")


def export_in_form(
    module, args: tuple, path, form: ExportForm, *, input_names: list[str], output_names: list[str],
    axes: dict[str, dict[int, str]], varargs_from: int | None = None,
) -> None:
    """Export ``module`` (called with ``args``, in ``input_names`` order) as ``form`` spells it.

    ``axes`` names each input's dynamic axes by role (``{"input_ids": {0: "batch", 1: "sequence"}}``).
    "named" uses one ``torch.export.Dim`` per role, "named-distinct" one per input and role
    (torch then merges what it proves equal, and leaves the rest apart), "bounded" named Dims
    with min/max; a role spelled as a sum ("past+sequence") has no Dim arithmetic in torch and
    stays ``Dim.DYNAMIC`` in the named spellings, and is "total_length" to the legacy exporter. "dynamic_axes-distinct" gives every input's
    axes names of their own. "static" declares nothing dynamic. ``varargs_from``: the inputs
    from this index on are the module's ``*args`` (GPT-2's past tensors).
    """
    import torch

    Dim = torch.export.Dim
    common = dict(input_names=input_names, output_names=output_names, verbose=False)
    if form.opset:
        common["opset_version"] = form.opset
    with quiet_export():
        if form.exporter == "legacy":
            dynamic = None
            if form.spelling != "static":
                distinct = form.spelling == "dynamic_axes-distinct"

                def label(name: str, role: str) -> str:  # a sum is one more name to the legacy exporter
                    role = "total_length" if "+" in role else role
                    return f"{name}_{role}" if distinct else role

                dynamic = {name: {axis: label(name, role) for axis, role in spec.items()} for name, spec in axes.items()}
            torch.onnx.export(module, args, str(path), dynamo=False, dynamic_axes=dynamic, **common)
            return
        named: dict[str, Any] = {}

        def dim(name: str, role: str):
            if form.spelling == "Dim.DYNAMIC" or "+" in role:
                return Dim.DYNAMIC
            if form.spelling == "Dim.AUTO":
                return Dim.AUTO
            key = f"{name}_{role}" if form.spelling == "named-distinct" else role
            if key not in named:
                bounds = {"min": 1, "max": 1024} if form.spelling == "bounded" else {}
                named[key] = Dim(key.replace(".", "_"), **bounds)
            return named[key]

        shapes = None
        if form.spelling != "static":
            shapes = tuple({axis: dim(name, role) for axis, role in axes.get(name, {}).items()} or None for name in input_names)
            if varargs_from is not None:
                shapes = (*shapes[:varargs_from], shapes[varargs_from:])
        torch.onnx.export(module, args, str(path), dynamo=True, dynamic_shapes=shapes, **common)
