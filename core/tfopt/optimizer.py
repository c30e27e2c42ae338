"""Drop-in for ONNX Runtime's ``onnxruntime.transformers.optimizer``: same flags, same Python API.

Command line (also ``tfopt optimize``)::

    python -m tfopt.optimizer --input in.onnx --output out.onnx --model_type bert \\
        --num_heads 12 --hidden_size 768 [--input_int32] [--float16] [--use_gpu]

Python::

    from tfopt import optimize_model
    model = optimize_model("in.onnx", model_type="bert", num_heads=12, hidden_size=768)
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file("out.onnx")
    print(model.get_fused_operator_statistics())

Differences that matter: ``num_heads``/``hidden_size`` of 0 (the default) are detected
from the graph; ``opt_level`` 0 or 1 (the default) runs tfopt's fusions only, because
ONNX Runtime applies its basic optimizations when it loads any model anyway, while 2 and
99 additionally run ONNX Runtime's offline optimizer at that level (the output is then
tied to the provider and machine, as in ONNX Runtime's tool). Outputs are written
atomically; the input is never modified.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import click
import onnx
import onnx_ir as ir

from .console import TfoptCommand, progress_printer, show_error_details
from .errors import TfoptError, first_line
from .graph.fusion import FUSION_NAMES, MODEL_TYPES, fuse_model
from .graph.model_types import not_covered_reason, types_help
from .graph.passes import OPSET_RAISED
from .graph.io import INPUT_SHAPES, load_model, model_files, save_model
from .graph.validate import Reference, dropped_rule_line, validation_line
from .results import ModelInfo

OPT_LEVELS = (0, 1, 2, 99)
MS_DOMAIN = "com.microsoft"

# The keys ONNX Runtime's BertOnnxModel.get_fused_operator_statistics() reports, always present.
ORT_STATISTICS_OPS = (
    "EmbedLayerNormalization", "Attention", "MultiHeadAttention", "Gelu", "FastGelu", "BiasGelu",
    "GemmFastGelu", "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization", "RotaryEmbedding", "QOrderedAttention", "QOrderedGelu",
    "QOrderedLayerNormalization", "QOrderedMatMul",
)

# ONNX Runtime's FusionOptions attribute -> tfopt fusion names it switches off when False.
_FUSION_OPTION_NAMES = {
    "enable_attention": ("attention",),
    "enable_skip_layer_norm": ("skip_layer_norm",),
    "enable_embed_layer_norm": ("embed_layer_norm",),
    "enable_bias_gelu": ("bias_gelu",),
    "enable_gelu": ("gelu", "fast_gelu"),
    "enable_layer_norm": ("layer_norm",),
}

# CLI flag -> tfopt fusion names (ONNX Runtime's --disable_gelu covers Gelu and FastGelu).
DISABLE_FLAGS = {
    "disable_attention": ("attention",),
    "disable_skip_layer_norm": ("skip_layer_norm",),
    "disable_embed_layer_norm": ("embed_layer_norm",),
    "disable_bias_gelu": ("bias_gelu",),
    "disable_gelu": ("gelu", "fast_gelu"),
    "disable_layer_norm": ("layer_norm",),
}


def check_model_type(model_type: str) -> str:
    if model_type not in MODEL_TYPES:
        reason = not_covered_reason(model_type)
        if reason is not None:  # one of ONNX Runtime's names tfopt has no measured rules for
            raise TfoptError(f"model type {model_type!r} is not covered: {reason}")
        raise TfoptError(f"unknown model type {model_type!r}; valid: {', '.join(MODEL_TYPES)}")
    return model_type


def check_heads(num_heads: int, hidden_size: int) -> None:
    if num_heads < 0 or hidden_size < 0:
        raise TfoptError(f"num_heads and hidden_size must be >= 0 (0 = detect), got {num_heads} and {hidden_size}")
    if num_heads and hidden_size and hidden_size % num_heads:
        raise TfoptError(f"num_heads={num_heads} does not divide hidden_size={hidden_size}")


def check_output_path(input_path: str | Path, output_path: str | Path) -> None:
    """Refuse, before any work: an unreadable input, writing over any file of the input, a directory,
    a path under a file, a symlink loop."""
    from .graph.input_checks import check_input_file

    input_path, output_path = Path(input_path), Path(output_path)
    check_input_file(input_path)
    try:
        resolved = output_path.resolve()
    except (RuntimeError, OSError):  # Python raises RuntimeError for a symlink loop
        raise TfoptError(f"{output_path}: is a symlink loop, not a path to write to") from None
    taken = model_files(input_path)
    for target in (resolved, resolved.with_name(resolved.name + ".data")):
        if target in taken:
            what = "the input path" if target == input_path.resolve() else f"part of the input model ({input_path})"
            raise TfoptError(f"{output_path}: output path is {what}; refusing to overwrite the input")
    if output_path.is_dir():
        raise TfoptError(f"{output_path}: is a directory, expected an output .onnx file path")
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TfoptError(f"{output_path}: {parent} is not a directory")
            break


def _disabled_from_options(optimization_options: Any) -> set[str]:
    """Fusions switched off by an ONNX Runtime FusionOptions-like object (duck-typed)."""
    disabled: set[str] = set()
    for attribute, names in _FUSION_OPTION_NAMES.items():
        if getattr(optimization_options, attribute, True) is False:
            disabled.update(names)
    return disabled


def _ort_offline_optimize(model: ir.Model, level: int, use_gpu: bool) -> ir.Model:
    """ONNX Runtime's own graph optimizer at ``level``, written by a session and read back."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if use_gpu:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise TfoptError(
                "--use_gpu with --opt_level 2/99 needs ONNX Runtime's CUDA provider (onnxruntime-gpu); "
                "use --opt_level 0 or 1 to fuse for the GPU on this machine"
            )
        providers.insert(0, "CUDAExecutionProvider")
    levels = {
        0: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        2: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        99: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    tmp_dir = Path(tempfile.mkdtemp(prefix="tfopt-ort-"))
    try:
        source = save_model(model, tmp_dir / "in.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(tmp_dir / "out.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "out.onnx.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1048576")
        try:
            ort.InferenceSession(str(source), options, providers=providers)
        except Exception as exc:
            raise TfoptError(f"ONNX Runtime could not optimize the model ({first_line(exc)})") from None
        return ir.serde.deserialize_model(onnx.load(str(tmp_dir / "out.onnx")))  # weights into memory
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _refuse_if_onnxruntime_cannot_load(input_path: str | Path) -> None:
    """A one-line error when ONNX Runtime cannot load the input either (called when fusion failed unexpectedly):
    a graph whose declared types or shapes contradict what it computes can break a pass."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(input_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise TfoptError(f"{input_path}: ONNX Runtime cannot load the model ({first_line(exc)})") from None


def _is_onnxruntime_error(exc: BaseException | None) -> bool:
    return exc is not None and type(exc).__module__.startswith("onnxruntime")


class InputReference(Reference):
    """The input as validation's reference, for a bare ONNX file: it must load and run in ONNX Runtime.

    Without an adapter there is no way to size the generated inputs differently, so an input
    ONNX Runtime cannot run on them is a one-line error (``--no-validate`` writes the model
    unchecked) instead of a model written with parity not checked. Inputs that declare no
    shape are fed the shape the graph implies (:func:`tfopt.graph.input_checks.input_shapes_from_graph`,
    the one the loader gives the optimized model): the reference is then a copy of the input
    with those shapes declared, in a temp folder until :meth:`close`.
    """

    def __init__(self, input_path: str | Path, input_shapes: dict[str, list] | None = None):
        from .graph.input_checks import set_shape

        self.input_path = Path(input_path)
        self.inferred = dict(input_shapes or {})
        self._tmp: Path | None = None
        path = self.input_path
        unknown = [name for name, dims in self.inferred.items() if not dims]
        if unknown:
            raise TfoptError(
                f"{path}: input {unknown[0]!r} declares no shape and the graph does not imply one, so validation "
                "cannot generate it; declare its shape, or pass --no-validate"
            )
        if self.inferred:
            proto = onnx.load(str(path))  # the weights too: the copy lives in another folder
            for value in proto.graph.input:
                if value.name in self.inferred:
                    set_shape(value, self.inferred[value.name])
            self._tmp = Path(tempfile.mkdtemp(prefix="tfopt-reference-"))
            path = self._tmp / path.name
            external = len(model_files(self.input_path)) > 1
            onnx.save_model(proto, str(path), save_as_external_data=external, location=path.name + ".data")
        super().__init__(path)

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _problem(self, what: str, exc: BaseException | None) -> str:
        because = f" ({first_line(exc)})" if exc is not None else ""
        if self.inferred:
            shapes = ", ".join(f"{name} [{', '.join(map(str, dims))}]" for name, dims in self.inferred.items())
            return (f"{self.input_path}: ONNX Runtime cannot {what} the model with the shapes taken from the graph for "
                    f"inputs that declare none ({shapes}){because}; declare them, or pass --no-validate")
        action = "load the model" if what == "load" else "run the model on generated inputs"
        return f"{self.input_path}: ONNX Runtime cannot {action}{because}; pass --no-validate to optimize it unchecked"

    def _run_failure(self) -> BaseException | None:
        """What ONNX Runtime says when it runs the input on the first generated feed (for the error line)."""
        import onnxruntime as ort

        from .feeds import session_feed
        from .graph.validate import validation_feeds

        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            session.run(None, session_feed(session, validation_feeds(self.path)[0][0]))
        except Exception as exc:
            return exc
        return None

    def validate(self, candidate: str | Path, precision: str = "fp32"):
        try:
            result = super().validate(candidate, precision)
        except TfoptError as exc:
            cause = exc.__cause__ or exc.__context__
            if _is_onnxruntime_error(cause):  # the input does not load in ONNX Runtime
                raise TfoptError(self._problem("load", cause)) from None
            raise
        if result.passed and not result.feeds:  # the input loads but runs on none of the generated feeds
            raise TfoptError(self._problem("run", self._run_failure()))
        return result


class OptimizedModel:
    """What :func:`optimize_model` returns: the parts of ONNX Runtime's ``OnnxModel`` scripts use.

    The graph is held as an onnx-ir model (weights stay on disk until saved). Reading
    ``.model`` turns it into an ``onnx.ModelProto`` once; from then on that proto is the
    model, so changes made to it are what ``save_model_to_file`` writes.

    ``save_model_to_file`` validates before it writes (:mod:`tfopt.graph.validate`): when a
    fusion rule broke the model, the model is rebuilt without it (``dropped_rules`` says
    which), unless the proto was handed out through ``.model`` and may hold the caller's
    own edits; then a failing model is an error and nothing is written.
    """

    def __init__(self, model: ir.Model, *, input_path: Path, stats=None, rebuild=None, validate: bool = True,
                 input_shapes: dict[str, list | None] | None = None):
        self._ir: ir.Model | None = model
        self.input_shapes = dict(input_shapes or {})  # what the loader gave inputs that declared no shape
        self._proto: onnx.ModelProto | None = None
        self.input_path = Path(input_path)
        self.stats = stats  # tfopt.graph.FusionStats, or None when tfopt's fusions did not run
        self.validate = validate
        self.validation = None  # tfopt.results.Validation of the last saved model
        self.dropped_rules: list = []  # tfopt.results.DroppedRule for each rule left out
        self._rebuild = rebuild  # skip_rules -> (ir.Model, FusionStats), to fuse again without a rule
        self._fp16_options: dict | None = None  # convert_float_to_float16's arguments, replayed on rebuilds
        self._fp32: ir.Model | None = None  # the fused model before convert_float_to_float16
        self._handed_out = False

    @property
    def model(self) -> onnx.ModelProto:
        self._handed_out = True
        return self._as_proto()

    def _as_proto(self) -> onnx.ModelProto:
        if self._proto is None:
            self._proto = ir.serde.serialize_model(self._ir)
            self._ir = None
        return self._proto

    def _ir_model(self) -> ir.Model:
        return self._ir if self._ir is not None else ir.serde.deserialize_model(self._proto)

    def _op_types(self) -> Counter:
        if self._ir is not None:
            return Counter((node.domain or "", node.op_type) for node in self._ir.graph)
        return Counter((node.domain or "", node.op_type) for node in self._proto.graph.node)

    def get_fused_operator_statistics(self) -> dict[str, int]:
        """Op type -> count for ONNX Runtime's fused-op keys (0 when absent) plus any other contrib op."""
        counts = self._op_types()
        statistics = {op: sum(n for (_, op_type), n in counts.items() if op_type == op) for op in ORT_STATISTICS_OPS}
        for (domain, op_type), count in sorted(counts.items()):
            if domain == MS_DOMAIN and op_type not in statistics:
                statistics[op_type] = count
        return statistics

    @property
    def missing_fusions(self) -> list[str]:
        """Each fusion the model type expects that did not happen (empty if none or not fused)."""
        return list(self.stats.missing) if self.stats is not None else []

    def convert_float_to_float16(self, use_symbolic_shape_infer: bool = True, keep_io_types: bool = True, **kwargs) -> None:
        """fp16 in place, with tfopt's NaN-safe block list unless ``op_block_list`` is given.

        ``use_symbolic_shape_infer`` is accepted for compatibility; the converter needs no shapes.
        """
        from .precision import convert_proto_to_fp16

        # base_dir: the input's folder, where the weights it keeps as external data are read from
        self._fp16_options = {"base_dir": self.input_path.parent, **kwargs, "keep_io_types": keep_io_types}
        if not self._handed_out:
            self._fp32 = self._ir_model()  # validated at fp32 tolerance before the fp16 one on save
        self._proto = convert_proto_to_fp16(self._as_proto(), **self._fp16_options)
        self._ir = None

    def _to_fp16(self, model: ir.Model) -> ir.Model:
        """The conversion ``convert_float_to_float16`` made, for a model fused again on save."""
        if model is self._fp32:
            return self._ir_model()  # converted already
        from .precision import convert_proto_to_fp16

        return ir.serde.deserialize_model(convert_proto_to_fp16(ir.serde.serialize_model(model), **self._fp16_options))

    def _built_without(self, skip: frozenset[str]):
        """(model, stats, fired rules) for write_validated: as it is, or fused again without ``skip``."""
        from .graph.fusion import fired_rules

        if skip:
            model, stats = self._rebuild(skip)
            return model, stats, fired_rules(stats)
        rebuildable = self._rebuild is not None and self.stats is not None and (self._fp16_options is None or self._fp32 is not None)
        fired = fired_rules(self.stats) if rebuildable and not self._handed_out else []
        model = self._fp32 if self._fp16_options is not None and self._fp32 is not None else self._ir_model()
        return model, self.stats, fired

    def save_model_to_file(self, output_path: str | Path, use_external_data_format: bool = False, **_ignored) -> Path:
        """Validate, then write atomically; weights go to ``<name>.data`` when large or external in the input.

        ``use_external_data_format`` is accepted for compatibility: tfopt decides by size
        (100 MB and up, or external in the input), which covers models over 2 GB. An input
        ONNX Runtime cannot load, or cannot run on the generated inputs, is a one-line
        :class:`TfoptError` and nothing is written (:class:`InputReference`); ``validate=False``
        writes the model unchecked.
        """
        from .graph.validate import write_validated

        check_output_path(self.input_path, output_path)
        fp16 = self._fp16_options is not None
        reference = InputReference(self.input_path, self.input_shapes) if self.validate else self.input_path
        try:
            outcome = write_validated(
                self._built_without, output_path, reference, refuse=self.input_path,
                convert=self._to_fp16 if fp16 and self._fp32 is not None else None,
                precision="fp16" if fp16 else "fp32", validate=self.validate,
                external=len(model_files(self.input_path)) > 1,  # the input kept its weights beside it
            )
        except OSError as exc:
            raise TfoptError(f"{output_path}: cannot write ({exc.strerror or exc})") from None
        finally:
            if isinstance(reference, InputReference):
                reference.close()
        if outcome.dropped:
            self._ir, self._proto, self.stats = outcome.model, None, outcome.built
        self.validation, self.dropped_rules = outcome.validation, outcome.dropped
        return Path(output_path)


def optimize_model(
    input: str | Path,
    model_type: str = "bert",
    num_heads: int = 0,
    hidden_size: int = 0,
    optimization_options: Any = None,
    opt_level: int | None = None,
    use_gpu: bool = False,
    only_onnxruntime: bool = False,
    verbose: bool = False,
    *,
    disabled_fusions: Iterable[str] = (),
    input_int32: bool = False,
    provider: str | None = None,
    validate: bool = True,
    cpu_layer_norm: bool = False,
) -> OptimizedModel:
    """Fuse ``input`` for ONNX Runtime, like ``onnxruntime.transformers.optimizer.optimize_model``.

    ``model_type``: one of :data:`tfopt.graph.fusion.MODEL_TYPES` (bert, roberta, distilbert, albert, bert_tf, bert_keras, gpt2, ...). ``num_heads``/``hidden_size``:
    0 = detect from the graph. ``disabled_fusions``: names from
    :data:`tfopt.graph.FUSION_NAMES`; an ONNX Runtime ``FusionOptions`` passed as
    ``optimization_options`` is honoured too. ``use_gpu`` (or ``provider="cuda"``)
    picks the CUDA target's ops (packed Attention). ``cpu_layer_norm`` writes the residual
    LayerNorms as Sum + LayerNormalization, faster on ONNX Runtime's CPU provider
    (:mod:`tfopt.graph.cpu_forms`; not with ``use_gpu``). ``only_onnxruntime`` skips tfopt's
    fusions and runs ONNX Runtime's optimizer only (at ``opt_level``, default 99).
    ``verbose`` is accepted for compatibility; the result's ``stats`` holds per-rule counts.
    ``validate=False`` writes the model without checking it against the input (see
    :meth:`OptimizedModel.save_model_to_file`).
    """
    check_model_type(model_type)
    check_heads(int(num_heads), int(hidden_size))
    if opt_level is not None and opt_level not in OPT_LEVELS:
        raise TfoptError(f"opt_level must be one of {', '.join(map(str, OPT_LEVELS))}, got {opt_level}")
    use_gpu = use_gpu or (provider or "").lower() in ("cuda", "rocm", "tensorrt")
    if cpu_layer_norm and (use_gpu or only_onnxruntime):
        raise TfoptError("cpu_layer_norm is a form of tfopt's CPU fusion: not with use_gpu or only_onnxruntime")
    disabled = set(disabled_fusions) | _disabled_from_options(optimization_options)
    unknown = disabled - set(FUSION_NAMES)
    if unknown:
        raise TfoptError(f"unknown fusion name(s) {', '.join(sorted(unknown))}; known: {', '.join(FUSION_NAMES)}")
    if only_onnxruntime:
        level = 99 if opt_level is None else opt_level
        loaded = load_model(input)
        return OptimizedModel(_ort_offline_optimize(loaded, level, use_gpu), input_path=Path(input), validate=validate,
                              input_shapes=loaded.meta.get(INPUT_SHAPES))
    info = ModelInfo(model_type=model_type, num_heads=int(num_heads), hidden_size=int(hidden_size))
    input_shapes: dict[str, list | None] = {}

    def fused_without(skip_rules: frozenset[str] = frozenset()):
        model = load_model(input)
        input_shapes.update(model.meta.get(INPUT_SHAPES, {}))
        try:
            stats = fuse_model(model, info, disabled=disabled, input_int32=input_int32, target="cuda" if use_gpu else "cpu", skip_rules=skip_rules,
                               cpu_layer_norm=cpu_layer_norm)
        except TfoptError:
            raise
        except Exception:
            _refuse_if_onnxruntime_cannot_load(input)  # the input's own fault, said in its terms
            raise  # tfopt's: a bug, with its traceback
        if opt_level in (2, 99):
            model = _ort_offline_optimize(model, opt_level, use_gpu)
        return model, stats

    model, stats = fused_without()
    return OptimizedModel(model, input_path=Path(input), stats=stats, rebuild=fused_without, validate=validate,
                          input_shapes=input_shapes)


# ----------------------------------------------------------------------------- command line

OPTIMIZE_HELP = """Fuse an exported transformer ONNX model for ONNX Runtime.

Takes the flags of ONNX Runtime's `python -m onnxruntime.transformers.optimizer`
(underscore or dash spellings). --num_heads/--hidden_size default to 0: detect them
from the graph. Every expected fusion that did not happen, and every primitive left
unfused (Softmax, norm chains, gelu formulas, rotate-half), is reported on stderr.

\b
Model types (ONNX Runtime's names and tfopt's; L = layers, from the Softmax count):
""" + "\n".join(f"  {line}" for line in types_help().splitlines()) + """

\b
Examples:
  tfopt optimize --input model.onnx --output model.opt.onnx --model_type bert
  tfopt optimize --input model.onnx --output model.opt.onnx --model_type bert \\
      --num_heads 12 --hidden_size 768 --input_int32 --float16
  python -m tfopt.optimizer --input model.onnx --output out.onnx --disable_attention
"""


def _flag(name: str, help_text: str):
    spellings = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"])  # ORT's underscores, and dashes
    return click.option(*spellings, name, is_flag=True, default=False, help=help_text)


def optimize_options(function):
    """The ONNX Runtime-compatible options, applied to the command below."""
    decorators = [
        click.option("--input", "input_path", required=True, type=click.Path(dir_okay=True, path_type=Path), help="The exported ONNX model."),
        click.option("--output", "output_path", required=True, type=click.Path(path_type=Path), help="Where to write the optimized model (never the input)."),
        click.option("--model_type", "--model-type", "model_type", default="bert", show_default=True, help="One of the model types listed above (what a fully fused model has)."),
        click.option("--num_heads", "--num-heads", "num_heads", type=int, default=0, show_default=True, help="Attention heads; 0 = detect."),
        click.option("--hidden_size", "--hidden-size", "hidden_size", type=int, default=0, show_default=True, help="Hidden size; 0 = detect."),
        _flag("input_int32", "Make int64 id/mask inputs int32 (removes the casts the contrib ops need)."),
        _flag("float16", "Convert to fp16, keeping fp32 inputs/outputs and NaN-prone ops."),
        click.option("--opt_level", "--opt-level", "opt_level", type=click.Choice(["0", "1", "2", "99"]), default=None, help="0/1 (default): tfopt's fusions only; 2/99: then ONNX Runtime's offline optimizer (output tied to the machine)."),
        _flag("use_gpu", "Fuse for the CUDA provider (packed Attention) instead of the CPU (MultiHeadAttention)."),
        _flag("cpu_layer_norm", "Write residual LayerNorms as Sum + LayerNormalization, not SkipLayerNormalization: ONNX Runtime's fp32 CPU kernel for the latter is ~5x slower (docs/fusions.md). For CPU deployments; not with --use_gpu."),
        _flag("only_onnxruntime", "Skip tfopt's fusions; run ONNX Runtime's offline optimizer only."),
        _flag("verbose", "Print per-rule match counts and detected shapes."),
        _flag("no_validate", "Write the model without validating it (ONNX Runtime load + parity with the input)."),
    ]
    for flag in DISABLE_FLAGS:
        decorators.append(_flag(flag, f"Do not fuse: {flag[len('disable_'):].replace('_', ' ')}."))
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


@click.command("optimize", cls=TfoptCommand, help=OPTIMIZE_HELP)
@optimize_options
def optimize_command(input_path, output_path, model_type, num_heads, hidden_size, input_int32, float16, opt_level,
                     use_gpu, cpu_layer_norm, only_onnxruntime, verbose, no_validate, **disable_flags):
    say = progress_printer()
    if verbose:
        show_error_details()  # an error's quotes of ONNX Runtime's text are printed whole, as under tfopt -v
    check_model_type(model_type)
    check_heads(num_heads, hidden_size)
    check_output_path(input_path, output_path)
    disabled = {name for flag, names in DISABLE_FLAGS.items() if disable_flags.get(flag) for name in names}
    optimized = optimize_model(
        input_path,
        model_type=model_type,
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=None if opt_level is None else int(opt_level),
        use_gpu=use_gpu,
        cpu_layer_norm=cpu_layer_norm,
        only_onnxruntime=only_onnxruntime,
        disabled_fusions=disabled,
        input_int32=input_int32,
        validate=not no_validate,
    )
    stats = optimized.stats
    if stats is not None and verbose:
        say(f"fusion took {stats.seconds:.2f} s; detected num_heads={stats.num_heads}, hidden_size={stats.hidden_size}")
        for rule, count in stats.rule_counts.items():
            if count:
                say(f"  rule {rule}: {count}")
        for note in stats.notes:
            say(f"  {note}")
    if float16:
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(output_path)
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    say("fused: " + (", ".join(f"{op} {count}" for op, count in fused.items()) or "nothing"))
    for note in stats.notes if stats is not None and not verbose else ():
        if note.startswith(OPSET_RAISED):  # the output needs a runtime with that opset: always said
            say(f"note: {note}")
    for dropped in optimized.dropped_rules:
        say(f"warning: {dropped_rule_line(dropped)}")
    for missing in optimized.missing_fusions:
        say(f"warning: expected fusion did not happen: {missing}")
    say(validation_line(optimized.validation))
    say(f"wrote {output_path}")


if __name__ == "__main__":
    optimize_command(prog_name="python -m tfopt.optimizer")
