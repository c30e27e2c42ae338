"""Options an adapter declares: typed flags of ``tfopt run/export --plugin NAME``, listed by its ``--help``.

An adapter states the options it reads with ``ctx.option(name)`` as data, beside its hooks (pytest's
module-level ``pytest_plugins`` is the model, not a seventh hook: there is nothing to compute)::

    tfopt_options = (
        PluginOption("data", str, None, "Labelled text file (CSV, TSV, JSONL).", metavar="FILE"),
        PluginOption("epochs", int, 2, "fp32 fine-tuning epochs."),
    )

``--data FILE`` then sets ``ctx.options["data"]``, as ``--option data=FILE`` does; an explicit flag
wins over ``--option``, and ``--option`` values of a declared option are read by the same type. The
default is what the adapter uses when the option is unset: it is shown in ``--help`` and never put
into ``ctx.options`` (the adapter keeps reading ``ctx.option(name, default)``). A declaration that
is malformed, or whose flag or key is one of ``tfopt run``'s own, refuses the plugin at load time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import click

from .errors import TfoptError

ATTRIBUTE = "tfopt_options"  # the module (or object) attribute an adapter declares its options in
TYPES = {str: "str", int: "int", float: "float", bool: "bool", list[int]: "list[int]"}

# What `tfopt run` and `tfopt export` already own (tests/test_plugin_options.py keeps these equal to
# the commands' own): an adapter's flag must be none of BUILTIN_FLAGS, its key none of BUILTIN_KEYS.
BUILTIN_FLAGS = frozenset({
    "-h", "--help", "--plugin", "--model", "--output", "--exporter", "--attn-implementation", "--opset", "--option",
    "--precision", "--input-int32", "--benchmark", "--no-benchmark", "--validate", "--no-validate", "--batch-sizes",
    "--sequence-lengths", "--disable", "--target", "--cpu-layer-norm", "--allow-missing-fusions", "--profile",
})
BUILTIN_KEYS = frozenset({
    "exporter", "attn_implementation", "opset", "precision", "input_int32", "benchmark", "validate", "batch_sizes",
    "sequence_lengths", "disabled", "target", "cpu_layer_norm", "allow_missing_fusions", "profile",
})


class _IntList(click.ParamType):
    """``1,2`` or ``[1, 2]`` (or a list already) -> ``[1, 2]``."""

    name = "1,2,..."

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            text = value.strip()
            try:
                value = json.loads(text) if text.startswith("[") else [part for part in text.split(",") if part.strip()]
            except json.JSONDecodeError:
                value = None
        items = value if isinstance(value, (list, tuple)) else [value]
        try:
            numbers = [int(str(item).strip()) for item in items]
        except (TypeError, ValueError):
            numbers = []
        if not numbers:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        return numbers


@dataclass(frozen=True)
class PluginOption:
    """One option an adapter reads with ``ctx.option(name)``: ``--name-with-dashes VALUE`` on the command line.

    ``type`` is ``str``, ``int``, ``float``, ``bool`` (a ``--name/--no-name`` flag) or ``list[int]``
    (``1,2``); ``choices`` limits a ``str``. ``default`` is the adapter's own when unset (help only).
    """

    name: str
    type: Any = str
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def param_type(self) -> click.ParamType:
        if self.choices:
            return click.Choice(self.choices)
        return {str: click.STRING, int: click.INT, float: click.FLOAT, bool: click.BOOL}.get(self.type) or _IntList()

    def convert(self, value: Any) -> Any:
        """``value`` (a command-line string or a parsed one) as this option's type; a one-line TfoptError if it is not."""
        try:
            return self.param_type().convert(value, None, None)
        except click.BadParameter as exc:
            raise TfoptError(f"--option {self.name}={value}: {exc.message} ({self.flag} takes {self.describe()})") from None

    def describe(self) -> str:
        return "|".join(self.choices) if self.choices else TYPES.get(self.type, "?")


def declared_options(plugin: object) -> tuple[PluginOption, ...]:
    """The plugin's ``tfopt_options`` (empty when it declares none); not checked: see :func:`declaration_problem`."""
    return tuple(getattr(plugin, ATTRIBUTE, None) or ())


def declaration_problem(plugin: object, *, is_adapter: bool) -> str | None:
    """Why the plugin's ``tfopt_options`` cannot be used, in one line, or None when it is sound."""
    raw = getattr(plugin, ATTRIBUTE, None)
    if raw is None:
        return None
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
        return f"{ATTRIBUTE} must be a list of tfopt.PluginOption, got {type(raw).__name__}"
    options = tuple(raw)
    if options and not is_adapter:
        return f"declares {ATTRIBUTE} but is not an adapter: options are flags of `tfopt run --plugin NAME`, for adapters only"
    seen: set[str] = set()
    for option in options:
        if not isinstance(option, PluginOption):
            return f"{ATTRIBUTE} must hold tfopt.PluginOption, got {type(option).__name__}"
        where = f"option {option.name!r}"
        if not isinstance(option.name, str) or not option.name.isidentifier() or option.name.startswith("_"):
            return f"{where}: the name must be a Python identifier (its flag is --name-with-dashes)"
        if option.flag in BUILTIN_FLAGS:
            return f"{where}: {option.flag} is a built-in flag of tfopt run/export; give the option another name"
        if option.name in BUILTIN_KEYS:
            return f"{where}: {option.name!r} is a built-in option of tfopt run/export (set by its own flag); give it another name"
        if option.name in seen:
            return f"{where} is declared twice"
        seen.add(option.name)
        if not any(option.type == known for known in TYPES):
            return f"{where}: type must be one of {', '.join(TYPES.values())}, got {option.type!r}"
        if option.choices is not None and (option.type is not str or not option.choices
                                           or not all(isinstance(choice, str) for choice in option.choices)):
            return f"{where}: choices must be a non-empty tuple of strings, with type str"
        if option.default is not None:
            try:
                option.param_type().convert(option.default, None, None)
            except click.BadParameter:
                return f"{where}: its default {option.default!r} does not fit its type ({option.describe()})"
    return None


# Read by tfopt.decoder_precision, for every decoder adapter that converts with it (gpt2, llama): each declares
# them with its own. Names, choices and defaults are decoder_precision's and precision's (a test keeps them equal).
DECODER_PRECISION_OPTIONS = (
    PluginOption("lm_head_precision", str, "quantized", "The LM head at int8/int4: quantized with the body, "
                 "int8 (an 8-bit head for int4), or kept fp32.", choices=("quantized", "int8", "fp32")),
    PluginOption("int8_method", str, "weight_only", "int8 as weight-only MatMulNBits, or ONNX Runtime's dynamic "
                 "quantization.", choices=("weight_only", "dynamic")),
    PluginOption("int4_block_size", int, 32, "MatMulNBits block along K (16: more accurate, more bytes)."),
    PluginOption("weight_rounding", str, None, "Weight-only int8/int4 rounding: GPTQ (calibrated on the model's "
                 "training text, or on --calibration-text) or nearest; default: gptq for the trained text models and "
                 "with --calibration-text, else nearest.", choices=("gptq", "nearest")),
    PluginOption("calibration_text", str, None, "A UTF-8 text file GPTQ calibrates a decoder-only model on, "
                 "tokenized with the model directory's tokenizer (a user's own model)."),
)
