"""The ``tfopt`` command: run, export, optimize, verify, bench, profile, report, plugins.

Progress goes to stderr, results to stdout. Exit codes (see ``console.py``): 0 ok,
1 verification failed (report kept), 2 one-line error.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import click

from . import __version__
from .console import TfoptGroup, error_line, progress_printer, third_party_output, warning_line
from .errors import TfoptError, first_line
from .plugins import parse_block_options
from .results import RunContext, to_jsonable

# Imported inside the commands that use them, so that `tfopt --help`, `tfopt plugins` and every
# command's own --help start without ONNX Runtime, torch or TensorFlow (tests/test_startup.py):
# tfopt.pipeline, tfopt.report, tfopt.precision, tfopt.graph.fusion, tfopt.optimizer. The choice
# lists a --help prints come from tfopt.results, which imports no onnx; `optimize`, defined in
# tfopt.optimizer, still loads the onnx stack for its --help. ONNX Runtime, whose log level every
# other command sets first, is left for a command that runs (MainGroup.resolve_command).

_HELP_ONLY = "tfopt.help_only"  # ctx.meta key: the subcommand's args ask for its --help


class LazyChoice(click.Choice):
    """A click.Choice whose values are a tuple in a module imported only when they are needed
    (a value to check, a --help to show), not when the command line is built."""

    def __init__(self, module: str, attribute: str, case_sensitive: bool = True):
        self._source = (module, attribute)
        self.case_sensitive = case_sensitive

    @property
    def choices(self):  # click reads self.choices everywhere it needs them
        module, attribute = self._source
        return tuple(getattr(importlib.import_module(module), attribute))


class MainGroup(TfoptGroup):
    """The ``tfopt`` group: commands defined in heavy modules are imported when they are run
    (or their --help shown), and listed in ``tfopt --help`` by their short help meanwhile."""

    # name -> (module, attribute, short help shown by `tfopt --help`; a test keeps it equal to the command's)
    lazy_commands = {
        "optimize": ("tfopt.optimizer", "optimize_command", "Fuse an exported transformer ONNX model for ONNX Runtime."),
    }

    def list_commands(self, ctx):
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx, name):
        if name in self.lazy_commands and name not in self.commands:
            module, attribute, _ = self.lazy_commands[name]
            self.add_command(getattr(importlib.import_module(module), attribute), name=name)
        return super().get_command(ctx, name)

    def resolve_command(self, ctx, args):
        """Also notes whether the command will only show its --help (then the group sets up no ONNX Runtime)."""
        name, command, rest = super().resolve_command(ctx, args)
        options = rest[: rest.index("--")] if "--" in rest else rest
        ctx.meta[_HELP_ONLY] = any(arg in ctx.help_option_names for arg in options)
        return name, command, rest

    def format_commands(self, ctx, formatter):
        listed = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name) or click.Command(name, short_help=self.lazy_commands[name][2])
            if not command.hidden:
                listed.append((name, command))
        if listed:
            limit = formatter.width - 6 - max(len(name) for name, _ in listed)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in listed])


MAIN_HELP = """Optimize transformer models for ONNX Runtime: export, fuse, convert, verify, benchmark.

Each model family is a plugin (entry-point group `tfopt`); `tfopt plugins` lists them.
Choose plugins per deployment with TFOPT_PLUGINS=a,b (empty: none), `-p no:NAME`, or
[plugins] allow/block in ./tfopt.toml (or the file named by TFOPT_CONFIG).

\b
Examples:
  tfopt plugins
  tfopt run --plugin bert_pt --output out/
  tfopt run --plugin bert_pt --model tiny-bert --exporter legacy --precision int8 --output out/
  tfopt -p no:gpt2 plugins --json
  tfopt optimize --input model.onnx --output model.opt.onnx --model_type bert
"""

_OPTION_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def parse_option_value(text: str) -> Any:
    """``8`` -> 8, ``true`` -> True, ``1,2`` -> [1, 2], ``[1, 2]`` -> [1, 2], anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [parse_option_value(part.strip()) for part in text.split(",") if part.strip()]
    return text


def option_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--option KEY=VALUE`` pairs as written (the last one of a key wins)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not _OPTION_KEY.match(key):
            raise TfoptError(f"--option expects key=value, got {pair!r}")
        options[key] = value.strip()
    return options


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    return {key: parse_option_value(value) for key, value in option_pairs(pairs).items()}


def parse_int_list(value: str | None, flag: str) -> list[int] | None:
    if value is None:
        return None
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise TfoptError(f"{flag} expects comma-separated positive integers, got {value!r}") from None
    if not numbers or min(numbers) <= 0:
        raise TfoptError(f"{flag} expects comma-separated positive integers, got {value!r}")
    return numbers


def _set(options: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Explicit flags win over --option pairs; unset flags (None) leave them alone."""
    options.update({key: value for key, value in values.items() if value is not None})
    return options


class _LazyPlugins:
    """The plugin manager, built on first use so `--help` and `optimize` never import plugins."""

    def __init__(self, blocks: tuple[str, ...]):
        self.blocked = parse_block_options(blocks)
        self._pm = None

    @property
    def pm(self):
        if self._pm is None:
            from .plugins import build_plugin_manager

            self._pm = build_plugin_manager(blocked=self.blocked)
            for warning in self._pm.warnings:  # shown even with -q: they are not progress
                click.echo(warning_line(warning), err=True)
        return self._pm


@click.group(name="tfopt", cls=MainGroup, help=MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "blocks", multiple=True, metavar="no:NAME", help="Block the plugin NAME for this command (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
@click.option("-v", "--verbose", is_flag=True,
              help="Let the libraries tfopt drives (ONNX Runtime, torch, transformers, TensorFlow) print their own warnings and logs.")
@click.version_option(__version__, prog_name="tfopt")
@click.pass_context
def main(ctx: click.Context, blocks: tuple[str, ...], quiet: bool, verbose: bool) -> None:
    ctx.obj = {"plugins": _LazyPlugins(blocks), "progress": progress_printer(quiet)}
    if not ctx.resilient_parsing:  # undone when the command ends (the group's context closes)
        ctx.with_resource(third_party_output(verbose, onnxruntime=_runs_onnxruntime(ctx)))


def _runs_onnxruntime(ctx: click.Context) -> bool:
    """Whether the command about to run may use ONNX Runtime: not `plugins`, not a command's --help."""
    return ctx.invoked_subcommand not in (None, "plugins") and not ctx.meta.get(_HELP_ONLY, False)


def _pm(ctx: click.Context):
    return ctx.obj["plugins"].pm


def source_options(function):
    """Options shared by `run` and `export`: which adapter, which model, how to export."""
    decorators = [
        click.option("--plugin", "plugin", required=True, metavar="NAME", help="The adapter to use (see `tfopt plugins`)."),
        click.option("--model", "source", default=None, metavar="SRC", help="Model directory, hub id or built-in name; default: the adapter's default model."),
        click.option("--output", "output", required=True, type=click.Path(path_type=Path), help="Output directory (created if needed)."),
        click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), default=None, help="torch exporter; default: torch's default."),
        click.option("--attn-implementation", "attn_implementation", type=click.Choice(["sdpa", "eager"]), default=None, help="transformers attention implementation (default sdpa)."),
        click.option("--opset", type=int, default=None, help="ONNX opset; default: the adapter's choice."),
        click.option("--option", "extra", multiple=True, metavar="KEY=VALUE", help="Any stage option, e.g. bench_repeat=50 or bench_batch_sizes=1,8 (repeatable)."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


_ADAPTER_DECLARED = "tfopt.adapter_declared"  # ctx.meta: (PluginOption, click.Option) of the --plugin adapter
_ADAPTER_FLAGS = "tfopt.adapter_flags"  # ctx.meta: option name -> the value its flag gave (None: not given)
_ADAPTER_NAME = "tfopt.adapter_name"
_ADAPTER_DEST = "adapter_option__"  # click's name for a declared option's flag, apart from the command's own


def _plugin_arg(args: list[str]) -> str | None:
    """The value of ``--plugin`` among a command's arguments (the last one, as click takes it), before parsing."""
    name = None
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--plugin" and index + 1 < len(args):
            name = args[index + 1]
        elif arg.startswith("--plugin="):
            name = arg.partition("=")[2]
    return name


def _adapter_flag(option) -> click.Option:
    """A declared option (tfopt.PluginOption) as a click flag; its default is shown, never applied."""
    decls = [f"{option.flag}/--no-{option.flag[2:]}" if option.type is bool else option.flag, _ADAPTER_DEST + option.name]
    shown = option.default
    if option.type is bool and shown is not None:
        shown = option.flag if shown else f"--no-{option.flag[2:]}"
    elif isinstance(shown, (list, tuple)):
        shown = ",".join(map(str, shown))
    text = option.help + (f"  [default: {shown}]" if shown is not None else "")
    kind = None if option.type is bool else option.param_type()
    return click.Option(decls, type=kind, default=None, metavar=option.metavar, help=text)


class AdapterCommand(click.Command):
    """`run` and `export`: the adapter named by --plugin adds the options it declares
    (``tfopt_options``, docs/plugins.md) as typed flags, listed by ``--plugin NAME --help``."""

    def parse_args(self, ctx, args):
        name = _plugin_arg(args)
        plugins = (ctx.obj or {}).get("plugins") if name else None
        if plugins is not None and not ctx.resilient_parsing:
            from .plugins import adapter_options

            ctx.meta[_ADAPTER_DECLARED] = [(option, _adapter_flag(option)) for option in adapter_options(plugins.pm, name)]
            ctx.meta[_ADAPTER_NAME] = name
        try:
            rest = super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            if plugins is None:
                raise
            from .plugins import check_adapter_name

            check_adapter_name(plugins.pm, name)  # `--plugin typo --data x`: the plugin is what is wrong
            raise TfoptError(f"{exc.format_message()} (see 'tfopt {ctx.info_name} --plugin {name} --help')") from None
        ctx.meta[_ADAPTER_FLAGS] = {
            option.name: ctx.params.pop(_ADAPTER_DEST + option.name, None) for option, _ in ctx.meta.get(_ADAPTER_DECLARED, ())
        }
        return rest

    def get_params(self, ctx):
        return [*super().get_params(ctx), *(flag for _, flag in ctx.meta.get(_ADAPTER_DECLARED, ()))]

    def format_options(self, ctx, formatter):
        """The command's own options, then the adapter's in a section of their own."""
        own = [record for param in super().get_params(ctx) if (record := param.get_help_record(ctx))]
        with formatter.section("Options"):
            formatter.write_dl(own)
        declared = ctx.meta.get(_ADAPTER_DECLARED)
        if declared:
            with formatter.section(f"Options of the {ctx.meta[_ADAPTER_NAME]} adapter (each also --option KEY=VALUE)"):
                formatter.write_dl([flag.get_help_record(ctx) for _, flag in declared])
        else:
            formatter.write_paragraph()
            formatter.write_text(
                f"{ctx.meta[_ADAPTER_NAME]} declares no options of its own." if declared is not None
                else f"`tfopt {ctx.info_name} --plugin NAME --help` also lists the options the adapter NAME declares."
            )


def adapter_options_of(ctx: click.Context, extra: tuple[str, ...]) -> dict[str, Any]:
    """--option pairs (those the adapter declares read by their type), then the adapter's flags: an explicit flag wins."""
    options = parse_options(extra)
    raw = option_pairs(extra)
    for option, _ in ctx.meta.get(_ADAPTER_DECLARED, ()):
        if option.name in raw:
            options[option.name] = option.convert(raw[option.name])
    return _set(options, **ctx.meta.get(_ADAPTER_FLAGS, {}))


RUN_HELP = """Export, fuse, convert, verify and benchmark one model with one adapter.

Writes OUTPUT/exported.onnx, OUTPUT/optimized.onnx (+ optimized.<precision>.onnx for
fp16/int8), OUTPUT/report.json (schema: docs/report.md) and OUTPUT/report.html (the same
as one page with plots), then prints a summary. --profile adds ONNX Runtime's profile of
the raw and the final model (docs/profile.md).
Exits 1 when verification fails, 3 when it passed but an expected fusion did not happen or
a primitive was left unfused (status "incomplete"; --allow-missing-fusions accepts it), the
report kept in both cases; 2 on any other error.

\b
Examples:
  tfopt run --plugin bert_pt --output out/
  tfopt run --plugin bert_pt --model tiny-roberta --exporter legacy \\
      --attn-implementation eager --precision fp16 --no-benchmark --output out/
  tfopt run --plugin bert_pt --model ./my-bert --batch-sizes 1,2 --sequence-lengths 8,64 \\
      --option bench_repeat=50 --output out/
"""


@main.command("run", cls=AdapterCommand, help=RUN_HELP)
@source_options
@click.option("--precision", type=LazyChoice("tfopt.results", "PRECISIONS"), default=None, help="Precision of the final model [default: the adapter's own (qat: int8), else fp32]. int8: dynamic quantization (an adapter may pick weight-only, as gpt2 does); int4: weight-only 4-bit MatMulNBits; bf16: for the CUDA provider (llama, gpt2, encoder adapters), verified here through a CPU emulation. An adapter's own settings are flags listed by `tfopt run --plugin NAME --help` (gpt2, llama: --lm-head-precision, --int8-method, --int4-block-size, --weight-rounding).")
@click.option("--input-int32", "input_int32", is_flag=True, default=None, help="Make int64 inputs int32 in the optimized model.")
@click.option("--benchmark/--no-benchmark", default=None, help="Measure latency after verification [default: on].")
@click.option("--validate/--no-validate", default=None,
              help="Check every written model (ONNX Runtime load + parity with the model it came from) before keeping it [default: on].")
@click.option("--batch-sizes", default=None, metavar="1,2,4", help="Batch sizes of the verification inputs.")
@click.option("--sequence-lengths", default=None, metavar="8,16,32", help="Sequence lengths of the verification inputs.")
@click.option("--disable", "disabled", multiple=True, type=LazyChoice("tfopt.results", "FUSION_NAMES"), help="Do not apply this fusion (repeatable).")
@click.option("--target", type=LazyChoice("tfopt.results", "TARGETS"), default=None,
              help="Device the fused ops are chosen for: cpu (MultiHeadAttention) or cuda (packed Attention) [default: cpu].")
@click.option("--cpu-layer-norm", "cpu_layer_norm", is_flag=True, default=None,
              help="Write residual LayerNorms as Sum + LayerNormalization, not SkipLayerNormalization: ONNX Runtime's fp32 CPU kernel for the latter is ~5x slower (docs/fusions.md). For CPU deployments; not with --target cuda.")
@click.option("--allow-missing-fusions", "allow_missing_fusions", is_flag=True, default=None,
              help="Pass a verified run although a fusion did not happen (it stays a warning) instead of ending 'incomplete' with exit 3.")
@click.option("--profile", "profile", is_flag=True, default=None,
              help="Also profile the raw and the final model with ONNX Runtime's profiler (settings: --option profile_sequence_length=128 ...; see `tfopt profile`).")
@click.pass_context
def run_command(ctx, plugin, source, output, exporter, attn_implementation, opset, extra, precision, input_int32,
                benchmark, validate, batch_sizes, sequence_lengths, disabled, target, cpu_layer_norm, allow_missing_fusions,
                profile):
    from .console import EXIT_FUSION_INCOMPLETE, EXIT_VERIFICATION_FAILED
    from .pipeline import run_pipeline, verification_message
    from .report import summary_text

    if cpu_layer_norm and target == "cuda":
        raise click.UsageError("--cpu-layer-norm is a CPU form; --target cuda keeps SkipLayerNormalization")
    options = _set(
        adapter_options_of(ctx, extra),
        exporter=exporter,
        attn_implementation=attn_implementation,
        opset=opset,
        precision=precision,
        input_int32=input_int32,
        benchmark=benchmark,
        validate=validate,
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"),
        sequence_lengths=parse_int_list(sequence_lengths, "--sequence-lengths"),
        disabled=list(disabled) or None,
        target=target,
        cpu_layer_norm=cpu_layer_norm,
        allow_missing_fusions=allow_missing_fusions,
        profile=profile,
    )
    options.setdefault("benchmark", True)  # precision: the adapter's default, else fp32 (run_pipeline)
    pm = _pm(ctx)  # run_pipeline checks the adapter name after clearing an earlier run's outputs
    run_ctx = RunContext(family=plugin, source=source, work_dir=output, options=options, progress=ctx.obj["progress"])
    try:
        outcome = run_pipeline(pm, plugin, run_ctx, raise_on_failure=False)
    except TfoptError as exc:
        report_path = output / "report.json"
        if report_path.is_file() and json.loads(report_path.read_text()).get("error") == str(exc):
            raise TfoptError(f"{exc} (report: {report_path})") from exc
        raise
    click.echo(summary_text(outcome.report, output))
    if not outcome.passed:
        click.echo(error_line(outcome.failure or verification_message(run_ctx.results["verify"], outcome.report_path)), err=True)
        ctx.exit(EXIT_FUSION_INCOMPLETE if outcome.status == "incomplete" else EXIT_VERIFICATION_FAILED)


EXPORT_HELP = """Export a model with an adapter, without fusing it.

Writes OUTPUT/exported.onnx and OUTPUT/report.json (status "exported").

\b
Example:
  tfopt export --plugin bert_pt --model tiny-bert --exporter legacy --output out/
"""


@main.command("export", cls=AdapterCommand, help=EXPORT_HELP)
@source_options
@click.pass_context
def export_command(ctx, plugin, source, output, exporter, attn_implementation, opset, extra):
    from .pipeline import run_export

    options = _set(adapter_options_of(ctx, extra), exporter=exporter, attn_implementation=attn_implementation, opset=opset)
    pm = _pm(ctx)
    run_ctx = RunContext(family=plugin, source=source, work_dir=output, options=options, progress=ctx.obj["progress"])
    exported = run_export(pm, plugin, run_ctx)
    inputs = ", ".join(f"{name}:{dtype}" for name, dtype in exported.io.inputs.items())
    click.echo(f"exported {exported.model_path} ({exported.exporter or 'exporter unknown'}; inputs {inputs})")


def _run_dir_context(ctx: click.Context, run_dir: Path, overrides: dict[str, Any]):
    """(pm, adapter, RunContext, ExportResult, report) for stages run again on a `tfopt run` output dir."""
    from .plugins import check_adapter_name
    from .report import export_result_from_report, load_report

    report = load_report(run_dir)
    adapter = report.get("family")
    pm = _pm(ctx)
    check_adapter_name(pm, adapter)
    options = dict(report.get("options") or {})
    options.update(overrides)
    run_ctx = RunContext(family=adapter, source=report.get("source"), work_dir=run_dir, options=options, progress=ctx.obj["progress"])
    return pm, adapter, run_ctx, export_result_from_report(report, run_dir), report


VERIFY_HELP = """Check a model's outputs against its reference.

TARGET is either a `tfopt run` output directory (its final model is checked against the
source framework by the adapter recorded in report.json) or an ONNX file, checked with
ONNX Runtime against the unfused model given by --reference. Exits 1 when it fails.

\b
Examples:
  tfopt verify out/
  tfopt verify model.opt.onnx --reference model.onnx --batch-sizes 1,4
"""


@main.command("verify", help=VERIFY_HELP)
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), default=None, help="Unfused ONNX model (when TARGET is a file).")
@click.option("--precision", type=LazyChoice("tfopt.results", "PRECISIONS"), default=None, help="Tolerance to apply (default: the run's precision, or fp32).")
@click.option("--tolerance", type=float, default=None, help="Max abs diff allowed (overrides --precision's).")
@click.option("--batch-sizes", default=None, metavar="1,2,4")
@click.option("--sequence-lengths", default=None, metavar="8,16,32")
@click.option("--option", "extra", multiple=True, metavar="KEY=VALUE")
@click.option("--json", "as_json", is_flag=True, help="Print the verification result as JSON.")
@click.pass_context
def verify_command(ctx, target, reference, precision, tolerance, batch_sizes, sequence_lengths, extra, as_json):
    from .pipeline import export_result_from_file, verification_message, verify_models
    from .report import parity_line, runnable_final

    overrides = _set(
        parse_options(extra),
        precision=precision,
        tolerance=tolerance,
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"),
        sequence_lengths=parse_int_list(sequence_lengths, "--sequence-lengths"),
    )
    if target.is_dir():
        if reference is not None:
            raise TfoptError("--reference is for an ONNX file TARGET; a run directory has its own reference")
        pm, adapter, run_ctx, exported, report = _run_dir_context(ctx, target, overrides)
        candidate = runnable_final(report, target)
        if candidate is None or not candidate.is_file():
            raise TfoptError(f"{target}: the report names no final model that exists")
    else:
        if not target.is_file():
            raise TfoptError(f"{target}: no such file or directory")
        if reference is None:
            raise TfoptError("an ONNX file TARGET needs --reference UNFUSED.onnx (or pass a `tfopt run` output directory)")
        pm, adapter, candidate = _pm(ctx), None, target
        exported = export_result_from_file(reference)
        run_ctx = RunContext(family="generic", source=str(reference), work_dir=target.parent, options=overrides, progress=ctx.obj["progress"])
    verified = verify_models(pm, adapter, run_ctx, exported, candidate)
    click.echo(json.dumps(to_jsonable(verified), indent=2) if as_json else parity_line(to_jsonable(verified)))
    if not verified.passed:
        click.echo(error_line(verification_message(verified)), err=True)
        ctx.exit(1)


BENCH_HELP = """Measure latency.

TARGET is either one `tfopt run` output directory (the adapter measures its source
framework, the raw export and tfopt's model) or one or more ONNX files, each timed with
ONNX Runtime on the same generated inputs.

\b
Examples:
  tfopt bench out/ --batch-sizes 1,4 --sequence-lengths 64 --repeat 10
  tfopt bench model.onnx model.opt.onnx --repeat 50
"""


@main.command("bench", help=BENCH_HELP)
@click.argument("targets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch-sizes", default=None, metavar="1", help="Batch sizes to time.")
@click.option("--sequence-lengths", default=None, metavar="8,32", help="Sequence lengths to time.")
@click.option("--repeat", type=click.IntRange(min=1), default=None, help="Timed calls per shape (default 20).")
@click.option("--option", "extra", multiple=True, metavar="KEY=VALUE")
@click.option("--json", "as_json", is_flag=True, help="Print the benchmark result as JSON.")
@click.pass_context
def bench_command(ctx, targets, batch_sizes, sequence_lengths, repeat, extra, as_json):
    from .pipeline import benchmark_models, export_result_from_file
    from .report import latency_lines, resolve_output

    overrides = _set(
        parse_options(extra),
        bench_batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"),
        bench_sequence_lengths=parse_int_list(sequence_lengths, "--sequence-lengths"),
        bench_repeat=repeat,
    )
    if len(targets) == 1 and targets[0].is_dir():
        pm, adapter, run_ctx, exported, report = _run_dir_context(ctx, targets[0], overrides)
        final = resolve_output(report, targets[0], "final")
        if final is None or not final.is_file():
            raise TfoptError(f"{targets[0]}: the report names no optimized model that exists; run `tfopt run` first")
        models = {"ort:raw": exported.model_path, "ort:tfopt": final}
    else:
        for target in targets:
            if not target.is_file():
                raise TfoptError(f"{target}: no such ONNX file (pass one run directory or ONNX files)")
        pm, adapter = _pm(ctx), None
        exported = export_result_from_file(targets[0])
        labels = [f"ort:{target.name}" for target in targets]
        if len(set(labels)) != len(labels):
            labels = [f"ort:{target}" for target in targets]
        models = dict(zip(labels, targets))
        run_ctx = RunContext(family="generic", source=str(targets[0]), work_dir=targets[0].parent, options=overrides, progress=ctx.obj["progress"])
    result = benchmark_models(pm, adapter, run_ctx, exported, models)
    if as_json:
        click.echo(json.dumps(to_jsonable(result), indent=2))
    else:
        click.echo("\n".join(latency_lines(to_jsonable(result))))


GENERATE_HELP = """Generate text with a decoder run's optimized model (gpt2, llama, seq2seq).

RUN_DIR is a `tfopt run` output directory of a decoder adapter: its final model is driven
one token per step, the cache kept in ONNX Runtime between steps (IO binding). Prompts are
text (tokenized with the tokenizer of the run's model directory) or token ids
(--prompt-ids, for models without a tokenizer such as the built-in tiny ones). Greedy unless
--do-sample. A decoder-only run left-pads the prompts into one batch and continues them.

A seq2seq run (an encoder and a decoder) reads each prompt as a source: the sources are
right-padded into one batch, encoded once, and the decoder writes each one's output from its
start token; --num-beams N > 1 is beam search as transformers' generate defines it (with
--length-penalty and --early-stopping). Whisper's source is audio: use the Python API.

\b
Examples:
  tfopt run --plugin llama --no-benchmark --output out-llama/
  tfopt generate out-llama/ --prompt-ids 1,2,3 --prompt-ids 4,5 --max-new-tokens 8
  tfopt generate out-llama/ --prompt-ids 7,8,9 --do-sample --temperature 0.8 --top-k 20 --seed 1
  tfopt run --plugin seq2seq --no-benchmark --output out-t5/
  tfopt generate out-t5/ --prompt-ids 5,6,7,8 --prompt-ids 9,10 --num-beams 4
"""


@main.command("generate", help=GENERATE_HELP)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT", help="A prompt (repeat for a batch); needs a tokenizer.")
@click.option("--prompt-ids", "prompt_ids", multiple=True, metavar="1,2,3", help="A prompt as token ids (repeat for a batch).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--do-sample", is_flag=True, help="Draw tokens instead of taking the most likely one.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="0 = no top-k filter.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-beams", type=click.IntRange(min=1), default=1, show_default=True, help="Beam search (seq2seq runs).")
@click.option("--length-penalty", type=float, default=1.0, show_default=True, help="Beam search: score / length ** this.")
@click.option("--early-stopping", type=click.Choice(["false", "true", "never"]), default="false", show_default=True,
              help="Beam search: when a batch row is done (transformers' meaning).")
@click.option("--json", "as_json", is_flag=True, help="Print the new token ids (and text) as JSON.")
def generate_command(run_dir, prompts, prompt_ids, max_new_tokens, do_sample, temperature, top_k, top_p, seed,
                     num_beams, length_penalty, early_stopping, as_json):
    from .generation import Sampling, generate_onnx, left_padded
    from .report import load_report, resolve_output, runnable_final

    report = load_report(run_dir)
    final = runnable_final(report, run_dir)
    if final is None or not final.is_file():
        raise TfoptError(f"{run_dir}: the report names no optimized model that exists; run `tfopt run` first")
    if bool(prompts) == bool(prompt_ids):
        raise TfoptError("give the prompts as --prompt TEXT or as --prompt-ids 1,2,3 (one of the two)")
    tokenizer = _tokenizer_of(report.get("source")) if prompts else None
    rows = [tokenizer.encode(text) for text in prompts] if prompts else [_token_ids(ids) for ids in prompt_ids]
    encoder = resolve_output(report, run_dir, "encoder_final")
    if encoder is not None:
        if do_sample:
            raise TfoptError("a seq2seq run generates greedily or by beam search (--num-beams); --do-sample is for decoder-only runs")
        tokens = _generate_seq2seq(encoder, final, rows, max_new_tokens, num_beams, length_penalty,
                                   {"false": False, "true": True}.get(early_stopping, early_stopping))
    elif num_beams > 1:
        raise TfoptError("--num-beams is for seq2seq runs; a decoder-only run samples or decodes greedily")
    else:
        ids, mask = left_padded(rows)
        sampling = Sampling(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        tokens = generate_onnx(final, ids, mask, max_new_tokens, sampling=sampling)
    texts = [tokenizer.decode(row) for row in tokens.tolist()] if tokenizer is not None else None
    if as_json:
        click.echo(json.dumps({"tokens": tokens.tolist(), "text": texts}, indent=2))
        return
    for index, row in enumerate(tokens.tolist()):
        click.echo(texts[index] if texts is not None else " ".join(map(str, row)))


def _generate_seq2seq(encoder: Path, decoder: Path, rows: list[list[int]], max_new_tokens: int, num_beams: int,
                      length_penalty: float, early_stopping):
    """The sources right-padded (with the pad token the decoder's metadata states) and generated from."""
    import numpy as np

    from .encoder_decoder import ATTENTION_MASK, INPUT_IDS, EncoderDecoder

    if not encoder.is_file():
        raise TfoptError(f"{encoder}: the run's encoder is missing; run `tfopt run` again")
    pair = EncoderDecoder(encoder, decoder)
    if INPUT_IDS not in {spec.name for spec in pair.encoder.get_inputs()}:
        raise TfoptError("this encoder reads audio features, not tokens: generate with the Python API (tfopt.encoder_decoder)")
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pair.tokens.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        ids[index, : len(row)], mask[index, : len(row)] = row, 1
    return pair.generate({INPUT_IDS: ids, ATTENTION_MASK: mask}, max_new_tokens, num_beams=num_beams,
                         length_penalty=length_penalty, early_stopping=early_stopping)


def _token_ids(value: str) -> list[int]:
    try:
        ids = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0:
        raise TfoptError(f"--prompt-ids expects comma-separated token ids (integers >= 0), got {value!r}")
    return ids


def _tokenizer_of(source: str | None):
    """The tokenizer saved in the run's model directory; a one-line error when there is none."""
    if not source or not Path(source).is_dir():
        raise TfoptError(f"the run's model ({source or 'a built-in one'}) has no tokenizer directory: pass --prompt-ids")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise TfoptError(f"{source}: no tokenizer could be loaded ({first_line(exc)}); pass --prompt-ids") from None


PLUGINS_HELP = """List installed plugins: name, version, distribution, hooks, status, load error.

\b
Examples:
  tfopt plugins
  TFOPT_PLUGINS=bert_pt tfopt plugins --json
"""


@main.command("plugins", help=PLUGINS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plugins_command(ctx, as_json):
    from .plugins import list_plugins

    listing = list_plugins(_pm(ctx))
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for entry in listing:
        kind = "built-in" if entry["builtin"] else "adapter" if entry["is_adapter"] else "extension"
        origin = f"{entry['distribution'] or '-'} {entry['version'] or ''}".rstrip()
        line = f"{entry['name']:<14} {kind:<10} {origin:<28} {entry['status']}"
        if entry["hooks"]:
            line += "  hooks: " + ", ".join(entry["hooks"])
        if entry["reason"]:
            line += f"  ({entry['reason']})"
        if entry["error"]:
            line += f"  error: {entry['error']}"
        click.echo(line)


PROFILE_HELP = """Where ONNX Runtime spends the time: kernel time per op type and per node.

TARGET is a `tfopt run` output directory (its raw export and its final model are profiled
with the adapter's dummy inputs of the given shape and compared: what the fusions removed,
what is left, the share of time in fused contrib ops) or an ONNX file (inputs generated from
its graph). Axes other than the batch and the sequence (audio samples) take the run's sizes
(the adapter's ModelInfo.axis_sizes), or --option 'axis_sizes={"samples": [1600]}'; the table
names the shape profiled. Prints a table and writes JSON (default RUN_DIR/profile.json, or MODEL.profile.json
beside the file). Times are per run: the mean over the quieter half of --samples runs
(after --warmup runs), so a run another process preempted is left out.

\b
Examples:
  tfopt profile out/ --sequence-length 128 --samples 20
  tfopt profile model.opt.onnx --batch-size 1 --sequence-length 64 --json
"""


@main.command("profile", help=PROFILE_HELP)
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size of the feed [default: 1].")
@click.option("--sequence-length", type=click.IntRange(min=1), default=None, help="New tokens per row [default: 32].")
@click.option("--past-sequence-length", type=click.IntRange(min=0), default=None, help="Past length, for decoders with past inputs [default: 0].")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Profiled runs [default: 20].")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Runs before them, left out [default: 3].")
@click.option("--threads", type=click.IntRange(min=0), default=None, help="ONNX Runtime intra-op threads; 0 = its default [default: 0].")
@click.option("--top", type=click.IntRange(min=1), default=None, help="Slowest nodes to list [default: 10].")
@click.option("--output", "output", type=click.Path(path_type=Path), default=None, help="Where to write the JSON.")
@click.option("--keep-trace", is_flag=True, help="Also keep ONNX Runtime's raw trace (profile.<label>.trace.json, for chrome://tracing or Perfetto).")
@click.option("--option", "extra", multiple=True, metavar="KEY=VALUE", help="A stage option, e.g. axis_sizes={\"samples\": [1600]} (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON instead of the table.")
@click.pass_context
def profile_command(ctx, target, batch_size, sequence_length, past_sequence_length, samples, warmup, threads, top, output, keep_trace, extra, as_json):
    from .profile import PROFILE_FILE, file_feed, profile_files, profile_lines, profile_run
    from .report import _portable, resolve_output

    settings = _set(
        parse_options(extra),
        profile_batch_size=batch_size,
        profile_sequence_length=sequence_length,
        profile_past_sequence_length=past_sequence_length,
        profile_samples=samples,
        profile_warmup=warmup,
        profile_threads=threads,
        profile_top=top,
    )
    if target.is_dir():
        pm, adapter, run_ctx, exported, report = _run_dir_context(ctx, target, settings)
        final = resolve_output(report, target, "final")
        if final is None or not final.is_file() or not exported.model_path.is_file():
            raise TfoptError(f"{target}: the report names no exported and final model that exist; run `tfopt run` first")
        output = output or target / PROFILE_FILE
        if keep_trace:
            run_ctx.options["profile_trace_dir"] = str(output.parent)
        result = profile_run(pm, adapter, run_ctx, exported, final)
        base = target
    else:
        if not target.is_file():
            raise TfoptError(f"{target}: no such ONNX file or run directory")
        from . import profile as defaults

        shape = (
            batch_size or defaults.DEFAULT_BATCH_SIZE,
            sequence_length or defaults.DEFAULT_SEQUENCE_LENGTH,
            defaults.DEFAULT_PAST_SEQUENCE_LENGTH if past_sequence_length is None else past_sequence_length,
        )
        output = output or target.with_name(target.name.removesuffix(".onnx") + ".profile.json")
        from .feeds import axis_sizes_from

        named = {axis: max(sizes) for axis, sizes in (axis_sizes_from(settings.get("axis_sizes"), "axis_sizes") or {}).items()}
        result = profile_files(
            {target.name: target},
            file_feed(target, *shape, axis_sizes=named),
            batch_size=shape[0],
            sequence_length=shape[1],
            past_sequence_length=shape[2],
            samples=samples or defaults.DEFAULT_SAMPLES,
            warmup=defaults.DEFAULT_WARMUP if warmup is None else warmup,
            threads=threads or 0,
            top=top or defaults.DEFAULT_TOP,
            trace_dir=output.parent if keep_trace else None,
            progress=ctx.obj["progress"],
        )
        base = output.parent
    data = _portable(result, base)
    from .report import write_report

    write_report(data, output)
    click.echo(json.dumps(data, indent=2) if as_json else "\n".join(profile_lines(data, top=top or 10) + [f"written: {output}"]))


REPORT_HELP = """One self-contained HTML page (plots inline, no network) for one or more run directories.

Several directories are shown side by side first (fp32 vs fp16 vs int8, two exporters,
two machines), then each on its own: what was run, fused-op coverage, parity, latency,
the profile when there is one (report.json's, or profile.json beside it), the warnings.

\b
Examples:
  tfopt report out/ --output report.html
"""


@main.command("report", help=REPORT_HELP)
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "output", required=True, type=click.Path(path_type=Path), help="The .html file to write.")
def report_command(run_dirs, output):
    from .html_report import write_report_page

    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise TfoptError(f"{run_dir}: not a directory (pass `tfopt run` output directories)")
    written = write_report_page(list(run_dirs), output)
    click.echo(f"written: {written} ({written.stat().st_size / 1024:.0f} KB, {len(run_dirs)} run{'s' if len(run_dirs) > 1 else ''})")



NEW_PLUGIN_HELP = """Start a model-family adapter: write the distribution tfopt-NAME into DIR.

It installs (`pip install -e DIR/tfopt-NAME`) and passes its tests as written: a tiny PyTorch
block built from a fixed seed, exported on both torch exporters, fused and checked against
stated counts, verified and benchmarked against torch, and a conformance test
(tfopt.testing). Replace the stand-in model with yours; docs/plugins.md is the guide.

\b
Examples:
  tfopt new-plugin my_family --dir plugins-src
"""


@main.command("new-plugin", help=NEW_PLUGIN_HELP)
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(path_type=Path),
              help="Where to create the tfopt-NAME folder.")
def new_plugin_command(name, directory):
    from .new_plugin import new_plugin

    target = new_plugin(name, directory)
    click.echo(f"written: {target} (pip install -e {target}; then tfopt run --plugin {name} --output out/)")
