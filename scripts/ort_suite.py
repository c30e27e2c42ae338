"""tfopt against ONNX Runtime's own transformer-optimizer test suite, case by case.

The cases are enumerated from an ONNX Runtime source tree (a checkout, or the extracted
``onnxruntime/test`` trees), never from a list kept here:

- **python**: every call of ``optimize_model`` / ``optimize_by_fusion`` made by the tests of
  ``onnxruntime/test/python/transformers/`` ``test_optimizer.py``, ``test_attention_fusion.py``,
  ``test_embedlayer_fusion.py``, ``test_skip_layer_norm_fusion.py`` and ``test_gelu_fusions.py``.
  Each file's tests are run once in a child process with those two functions wrapped: the wrapper
  saves the model it is given (the graphs the tests build with ``bert_model_generator.py`` /
  ``gpt2_model_generator.py`` / torch, or the stored files they load) and records the arguments
  (``model_type``, ``num_heads``, ``hidden_size``, ``opt_level``, every ``FusionOptions`` field
  that differs from the model type's default), then calls the installed
  ``onnxruntime.transformers`` function, so the tests run on as written.
- **stored**: models of ``test_optimizer.py``'s ``TEST_MODELS`` that are in the tree but that no
  enabled test loads (the Keras SQuAD BERT), with the arguments of ONNX Runtime's former
  (commented-out) test of it.
- **cpp**: the inputs under ``onnxruntime/test/testdata/transform/fusion/`` that the C++ graph
  transformer tests of the transformer fusions load (``onnxruntime/test/optimizer/*.cc``,
  tests named ``*Attention*``, ``*Gelu*``, ``*LayerNorm*``), less those a python case already
  runs. They have no optimizer arguments: ``model_type`` gpt2 for GPT-2 graphs (a ``past*`` input
  or "gpt2" in the name), bert otherwise, ``num_heads``/``hidden_size`` 0 (detect).

For each case, in child processes with a timeout: (a) ONNX Runtime's optimizer with the case's
arguments, counting its fused ops; (b) ``tfopt optimize`` (the CLI, as a user runs it) with the
same arguments (``enable_X = False`` becomes ``--disable_X``); then the output is loaded in an
ONNX Runtime CPU session and compared with the input on generated feeds. A case passes when tfopt
exits 0, its output loads, it fuses at least what ONNX Runtime fuses in every family (attention =
Attention + MultiHeadAttention + GroupQueryAttention; gelu = every Gelu form; norm = every
normalization op, fused or not) and every output is within 1e-4 * max(1, |ref|) of the input's
(or, for an ill-conditioned input, within 8x its own rounding noise, as tfopt's validation judges).

Usage:
    python scripts/ort_suite.py --ort-tree PATH [--cases SUBSTRING] [--work /tmp/ort-suite-cases]
        [--markdown FILE] [--timeout 300] [--list] [--reuse]

The built inputs stay in ``--work``: ``<case>.onnx`` plus ``<case>.json`` (arguments, source,
the tfopt command) and ``cases.json``; ``results.json`` holds the last run's rows.
No network is used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY_TESTS_REL = Path("onnxruntime/test/python/transformers")
FUSION_REL = Path("onnxruntime/test/testdata/transform/fusion")
CPP_TESTS_REL = Path("onnxruntime/test/optimizer")
PY_TEST_FILES = (
    "test_optimizer.py",
    "test_attention_fusion.py",
    "test_embedlayer_fusion.py",
    "test_skip_layer_norm_fusion.py",
    "test_gelu_fusions.py",
)
SHORT = {
    "test_optimizer": "optimizer",
    "test_attention_fusion": "attention",
    "test_embedlayer_fusion": "embedlayer",
    "test_skip_layer_norm_fusion": "skiplayernorm",
    "test_gelu_fusions": "gelu",
}
# C++ graph-transformer tests of the fusions onnxruntime.transformers also does.
CPP_TEST_NAME = re.compile(r"Attention|Gelu|LayerNorm")
CPP_FILE_PREFIXES = (
    "attention_", "bias_gelu", "bias_onnx_", "embed_layer_norm_", "fast_gelu", "gelu", "gpt2_",
    "layer_norm", "skip_layer_norm", "simplified_layer_norm",
)
# TEST_MODELS entries no enabled test loads: the arguments of ONNX Runtime's own former test
# (commented out in test_optimizer.py: `optimize_model(input, 'bert_keras', num_heads=2, hidden_size=8)`).
STORED_ARGS = {
    "bert_keras": {"model_type": "bert_keras", "num_heads": 2, "hidden_size": 8},
    "bert_tf2onnx": {"model_type": "bert_tf", "num_heads": 2, "hidden_size": 8},
}

FAMILIES = {
    "attention": ("Attention", "MultiHeadAttention", "GroupQueryAttention"),
    "embed": ("EmbedLayerNormalization",),
    # Sum: tfopt's CPU target writes each SkipLayerNormalization as Sum + LayerNormalization
    # (docs/fusions.md), one Sum each; none of the suite's inputs has a Sum of its own.
    "skip_ln": ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "Sum"),
    "norm": (
        "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization",
    ),
    "gelu": ("Gelu", "FastGelu", "BiasGelu", "QuickGelu", "GemmFastGelu"),
    "bias_add": ("BiasAdd",),
}
FAMILY_ABBREV = {"attention": "att", "embed": "emb", "skip_ln": "sln", "norm": "norm", "gelu": "gelu", "bias_add": "badd"}
# FusionOptions fields that map onto tfopt's flags; the rest (mask format, MHA vs Attention)
# have no tfopt counterpart and are ignored.
OPTION_FLAGS = {
    "enable_attention": "--disable_attention",
    "enable_skip_layer_norm": "--disable_skip_layer_norm",
    "enable_embed_layer_norm": "--disable_embed_layer_norm",
    "enable_bias_gelu": "--disable_bias_gelu",
    "enable_gelu": "--disable_gelu",
    "enable_layer_norm": "--disable_layer_norm",
}
RTOL = 1e-4
RESULT_MARK = "@@ort_suite@@"


# ---------------------------------------------------------------------------------------------
# Pure helpers (tests/test_ort_suite_script.py runs these without a checkout)
# ---------------------------------------------------------------------------------------------

def safe_name(name: str) -> str:
    """A file name for a case: letters, digits, '.', '-', '_' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def family_counts(op_types) -> dict[str, int]:
    """Fused-op counts per family from a list of op types."""
    counts = {family: 0 for family in FAMILIES}
    for op in op_types:
        for family, members in FAMILIES.items():
            if op in members:
                counts[family] += 1
    return counts


def shortfall(ort: dict[str, int], tfopt: dict[str, int]) -> list[str]:
    """Families in which tfopt fused fewer ops than ONNX Runtime."""
    return [family for family in FAMILIES if tfopt.get(family, 0) < ort.get(family, 0)]


def format_counts(counts: dict[str, int] | None) -> str:
    if counts is None:
        return "-"
    shown = [f"{FAMILY_ABBREV[f]}{counts[f]}" for f in FAMILIES if counts.get(f)]
    return " ".join(shown) or "none"


def tfopt_flags(args: dict) -> list[str]:
    """tfopt optimize's flags for a case's ONNX Runtime arguments."""
    flags = ["--model_type", str(args.get("model_type") or "bert"),
             "--num_heads", str(int(args.get("num_heads") or 0)),
             "--hidden_size", str(int(args.get("hidden_size") or 0))]
    if args.get("opt_level") is not None:
        flags += ["--opt_level", str(args["opt_level"])]
    options = args.get("options") or {}
    for field, flag in OPTION_FLAGS.items():
        if options.get(field) is False:
            flags.append(flag)
    if args.get("use_gpu"):
        flags.append("--use_gpu")
    return flags


def tfopt_command(tfopt: str, case_input: str, output: str, args: dict) -> list[str]:
    return [tfopt, "optimize", "--input", case_input, "--output", output, *tfopt_flags(args)]


def first_error_line(stderr: str) -> str:
    """The line a user reads as tfopt's error: '[tfopt: ]error: ...' if there is one, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if re.match(r"^([\w.-]+: )?error\b", line, re.IGNORECASE):
            return line
    return lines[-1] if lines else ""


ERROR_CATEGORIES = (
    (r"No opset import for domain", "refused: contrib op without its opset import"),
    (r"defined twice", "refused: a value defined twice"),
    (r"No Op registered|onnx\.checker|checker", "refused by onnx.checker"),
    (r"cannot run the model", "refused: the input does not run in ONNX Runtime on tfopt's inputs"),
    (r"(num_heads|hidden_size)=\d+ does not match|contradict", "refused: --num_heads/--hidden_size vs graph"),
    (r"parity|differs|tolerance|fails validation", "tfopt's validation failed"),
)


def error_category(message: str) -> str:
    for pattern, category in ERROR_CATEGORIES:
        if re.search(pattern, message, re.IGNORECASE):
            return category
    generic = re.sub(r"'[^']*'|\"[^\"]*\"|\d+(\.\d+)?(e-?\d+)?", "…", message)
    return "tfopt error: " + generic[:60]


def within_tolerance(ref, out, rtol: float = RTOL) -> tuple[bool, float]:
    """Elementwise |out - ref| <= rtol * max(1, |ref|); returns (ok, worst |out - ref| / max(1, |ref|))."""
    import numpy as np

    ref = np.asarray(ref)
    out = np.asarray(out)
    if ref.shape != out.shape:
        return False, float("inf")
    if ref.size == 0:
        return True, 0.0
    if ref.dtype == bool or out.dtype == bool:
        equal = bool(np.array_equal(ref, out))
        return equal, 0.0 if equal else float("inf")
    ref64 = ref.astype(np.float64)
    out64 = out.astype(np.float64)
    nan_ref, nan_out = np.isnan(ref64), np.isnan(out64)
    if not np.array_equal(nan_ref, nan_out):
        return False, float("inf")
    keep = ~nan_ref
    if not keep.any():
        return True, 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(out64[keep] - ref64[keep]) / np.maximum(1.0, np.abs(ref64[keep]))
    error = np.where(np.isnan(error), np.inf, error)  # inf - inf
    worst = float(error.max())
    return worst <= rtol, worst


def dim_roles(inputs: list[dict]) -> dict[str, str]:
    """Role of each symbolic dim: 'batch', 'seq', 'past' or 'total' (= past + seq).

    ``inputs``: [{"name", "shape": [int | str | None]}]. Read from names first ('batch';
    'total'/'plus'/'all' or a '+' expression; 'past'), else from where the symbol sits: axis 3 of a rank-5 past
    tensor is the past length, axis 1 of a 2-D mask in a model with past is the total length,
    axis 0 is the batch, anything else the sequence.
    """
    has_past = any(_is_past(i) for i in inputs)
    roles: dict[str, str] = {}
    for info in inputs:
        for axis, dim in enumerate(info["shape"]):
            if not isinstance(dim, str) or dim in roles:
                continue
            lowered = dim.lower()
            if "batch" in lowered:
                roles[dim] = "batch"
            elif "+" in lowered or any(word in lowered for word in ("total", "plus", "all_")):
                roles[dim] = "total"
            elif "past" in lowered:
                roles[dim] = "past"
            else:
                roles[dim] = _positional_role(info, axis, has_past)
    return roles


def _is_past(info: dict) -> bool:
    return info["name"].lower().startswith("past") and len(info["shape"]) == 5


def _positional_role(info: dict, axis: int, has_past: bool) -> str:
    rank = len(info["shape"])
    if _is_past(info):
        return {1: "batch", 3: "past"}.get(axis, "seq")
    if axis == 0 and rank >= 2:
        return "batch"
    if has_past and "mask" in info["name"].lower() and rank == 2 and axis == 1:
        return "total"
    return "seq"


def concrete_shape(info: dict, roles: dict[str, str], sizes: dict[str, int], has_past: bool) -> list[int]:
    """Numbers for one input's dims: fixed dims kept, symbols and unknown dims from their role."""
    shape = []
    for axis, dim in enumerate(info["shape"]):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
            continue
        role = roles.get(dim) if isinstance(dim, str) else _positional_role(info, axis, has_past)
        shape.append(sizes[role or "seq"])
    return shape


def padded_mask(shape: list[int], dtype) -> "object":
    """Ones, with the last third of every second row zeroed (right padding; position 0 is kept)."""
    import numpy as np

    mask = np.ones(shape, dtype=dtype)
    if len(shape) == 2 and shape[0] >= 2 and shape[1] >= 2:
        pad = max(1, shape[1] // 3)
        mask[1::2, shape[1] - pad:] = 0
    return mask


# ---------------------------------------------------------------------------------------------
# Feeds from a model (needs onnx + numpy)
# ---------------------------------------------------------------------------------------------

def graph_inputs(model) -> list[dict]:
    initializers = {init.name for init in model.graph.initializer}
    result = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims: list = []
        if tensor.HasField("shape"):
            for dim in tensor.shape.dim:
                if dim.HasField("dim_value"):
                    dims.append(int(dim.dim_value))
                elif dim.HasField("dim_param") and dim.dim_param not in ("", "?"):
                    dims.append(dim.dim_param)
                else:
                    dims.append(None)
        result.append({"name": value.name, "elem_type": tensor.elem_type, "shape": dims})
    return result


_PASS_THROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand"}


def index_limit(model, name: str) -> int | None:
    """Smallest row count of the tables an integer input indexes (through Cast/Reshape/...)."""
    from onnx import numpy_helper

    tables = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tables[node.output[0]] = list(numpy_helper.to_array(node.attribute[0].t).shape)
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for position, value in enumerate(node.input):
            consumers.setdefault(value, []).append((node, position))
    limits, seen, todo = [], set(), [name]
    while todo:
        value = todo.pop()
        if value in seen:
            continue
        seen.add(value)
        for node, position in consumers.get(value, []):
            if node.op_type in _PASS_THROUGH and position == 0:
                todo.extend(node.output)
            elif node.op_type == "Gather" and position == 1 and node.input[0] in tables:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                dims = tables[node.input[0]]
                if dims:
                    limits.append(dims[axis])
            elif node.op_type == "EmbedLayerNormalization" and position in (0, 1):
                table = node.input[2 if position == 0 else 4] if len(node.input) > 4 else ""
                if table in tables and tables[table]:
                    limits.append(tables[table][0])
    return min(limits) if limits else None


def make_feeds(model, batch: int = 2, seq: int = 5, past: int = 3, seed: int = 0) -> dict:
    """Feeds for every graph input: ids in range, masks of ones with right padding, floats ~N(0,1)."""
    import numpy as np
    from onnx import helper

    rng = np.random.default_rng(seed)
    inputs = graph_inputs(model)
    roles = dim_roles(inputs)
    has_past = any(_is_past(i) for i in inputs)
    sizes = {"batch": batch, "seq": seq, "past": past if has_past else 0}
    # a fixed sequence length on the ids input (GPT-2 decoding with one new token) wins
    for info in inputs:
        if "ids" in info["name"].lower() and len(info["shape"]) == 2 and isinstance(info["shape"][1], int) and info["shape"][1] > 0:
            sizes["seq"] = info["shape"][1]
            break
    sizes["total"] = sizes["seq"] + sizes["past"]
    feeds = {}
    for info in inputs:
        dtype = helper.tensor_dtype_to_np_dtype(info["elem_type"])
        shape = concrete_shape(info, roles, sizes, has_past)
        lowered = info["name"].lower()
        if dtype == np.bool_:
            feeds[info["name"]] = np.ones(shape, dtype=bool)
        elif "mask" in lowered:
            feeds[info["name"]] = padded_mask(shape, dtype)
        elif np.issubdtype(dtype, np.integer):
            limit = index_limit(model, info["name"])
            if "position" in lowered:
                start = sizes["past"]
                positions = np.arange(start, start + shape[-1]) if shape else np.array(start)
                if limit:
                    positions = np.minimum(positions, limit - 1)
                feeds[info["name"]] = np.broadcast_to(positions, shape).astype(dtype).copy()
            else:
                high = limit if limit else 2
                feeds[info["name"]] = rng.integers(0, high, size=shape).astype(dtype)
        else:
            feeds[info["name"]] = rng.standard_normal(shape).astype(dtype)
    return feeds


FEED_SIZES = ({"batch": 2, "seq": 5, "past": 3}, {"batch": 1, "seq": 4, "past": 2}, {"batch": 2, "seq": 8, "past": 0})


# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------

def _emit(payload) -> None:
    print(RESULT_MARK + json.dumps(payload), flush=True)


def _read_payload(stdout: str):
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    return None


def run_child(argv: list[str], timeout: float, cwd: str | None = None) -> tuple[object, str, float, int | None]:
    """(payload, stderr tail, seconds, returncode or None on timeout)."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:] if isinstance(exc.stderr, bytes) else (exc.stderr or "")[-2000:]
        return None, str(tail), time.perf_counter() - start, None
    return _read_payload(done.stdout), done.stderr[-4000:], time.perf_counter() - start, done.returncode


def _options_diff(options, model_type: str) -> dict:
    """FusionOptions fields that differ from the model type's defaults (enums as {enum, value})."""
    import enum

    from onnxruntime.transformers.fusion_options import FusionOptions

    if options is None:
        return {}
    default = vars(FusionOptions(model_type))
    diff = {}
    for key, value in vars(options).items():
        if key in default and default[key] == value:
            continue
        if isinstance(value, enum.Enum):
            value = {"enum": type(value).__name__, "value": value.value}
        elif not isinstance(value, (bool, int, float, str, type(None))):
            value = repr(value)
        diff[key] = value
    return diff


def _options_from_diff(model_type: str, diff: dict):
    import enum

    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(model_type)
    for key, value in (diff or {}).items():
        current = getattr(options, key, None)
        if isinstance(value, dict) and "enum" in value and isinstance(current, enum.Enum):
            value = type(current)(value["value"])
        setattr(options, key, value)
    return options


def _install_parameterized_stub() -> None:
    """`parameterized.expand(params)` that only marks the method with its parameter list."""
    import types

    stub = types.ModuleType("parameterized")

    class _Parameterized:
        @staticmethod
        def expand(params, *args, **kwargs):
            def mark(function):
                function._ort_suite_params = list(params)
                return function

            return mark

    stub.parameterized = _Parameterized
    sys.modules["parameterized"] = stub


def _param_label(params) -> str:
    items = []

    def flatten(value):
        if isinstance(value, (tuple, list)):
            for item in value:
                flatten(item)
        elif isinstance(value, type):
            items.append(value.__name__)
        else:
            items.append(str(value))

    flatten(params)
    return "-".join(items)


def child_capture(tree: Path, test_file: str, out_dir: Path) -> None:
    """Run one test file's tests with optimize_model/optimize_by_fusion recorded; emit the calls."""
    import contextlib
    import importlib
    import inspect
    import io
    import logging
    import unittest
    import warnings

    import onnx

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    tests_dir = (tree / PY_TESTS_REL).resolve()
    sys.path.insert(0, str(tests_dir))
    _install_parameterized_stub()
    import parity_utilities

    parity_utilities.find_transformers_source = lambda *a, **k: False  # the installed onnxruntime.transformers
    from onnxruntime.transformers import optimizer as ort_optimizer

    module = importlib.import_module(Path(test_file).stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    calls: list[dict] = []
    current: dict = {}

    def recorder(function_name: str):
        real = getattr(ort_optimizer, function_name)
        signature = inspect.signature(real)

        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            passed = dict(bound.arguments)
            bound.apply_defaults()
            full = bound.arguments
            first_name = next(iter(signature.parameters))
            model_arg = full[first_name]
            index = len(calls)
            saved = out_dir / f"call{index:03d}.onnx"
            source = None
            if isinstance(model_arg, (str, os.PathLike)):
                source = str(Path(model_arg).resolve())
                onnx.save(onnx.load(source), saved)
            else:
                onnx.save(model_arg, saved)
            model_type = full.get("model_type") or "bert"
            record = {
                "test": current["test"], "param": current.get("param"), "function": function_name,
                "saved": str(saved), "source": source, "model_type": model_type,
                "num_heads": int(full.get("num_heads") or 0), "hidden_size": int(full.get("hidden_size") or 0),
                "opt_level": passed.get("opt_level"), "use_gpu": bool(full.get("use_gpu", False)),
                "options": _options_diff(full.get("optimization_options"), model_type),
            }
            calls.append(record)
            result = real(*args, **kwargs)
            record["ort_in_test"] = [node.op_type for node in result.model.graph.node]
            return result

        return wrapper

    for function_name in ("optimize_model", "optimize_by_fusion"):
        if hasattr(module, function_name):
            setattr(module, function_name, recorder(function_name))

    outcomes = []
    work = Path(tempfile.mkdtemp(prefix="ort-suite-cwd-"))
    old_cwd = os.getcwd()
    os.chdir(work)
    try:
        for class_name, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, unittest.TestCase) or cls.__module__ != module.__name__:
                continue
            for method_name, method in inspect.getmembers(cls, inspect.isfunction):
                if not method_name.startswith("test"):
                    continue
                params = getattr(method, "_ort_suite_params", None)
                runs = [(None, ())] if params is None else [(i, p if isinstance(p, tuple) else (p,)) for i, p in enumerate(params)]
                for param_index, param in runs:
                    label = method_name if param_index is None else f"{method_name}[{_param_label(param)}]"
                    current.update(test=label, param=param_index)
                    instance = cls("run") if hasattr(cls, "run") else cls()
                    status = "pass"
                    with contextlib.redirect_stdout(io.StringIO()):
                        try:
                            method(instance, *param)
                        except unittest.SkipTest as exc:
                            status = f"skipped: {exc}"
                        except Exception as exc:  # noqa: BLE001 - the test's own failure is data
                            status = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                    outcomes.append({"test": label, "status": status})
                    for call in calls:
                        if call["test"] == label and "ort_test_status" not in call:
                            call["ort_test_status"] = status
    finally:
        os.chdir(old_cwd)
        shutil.rmtree(work, ignore_errors=True)
    test_models = {}
    for key, (sub_dir, file) in getattr(module, "TEST_MODELS", {}).items():
        path = module._get_test_model_path(key) if hasattr(module, "_get_test_model_path") else None
        test_models[key] = {"sub_dir": sub_dir, "file": file, "path": str(Path(path).resolve()) if path else None,
                            "exists": bool(path and Path(path).exists())}
    _emit({"calls": calls, "outcomes": outcomes, "test_models": test_models})


def child_ort(case_file: Path) -> None:
    """ONNX Runtime's optimizer on one case: the op types of its result."""
    import contextlib
    import io
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    case = json.loads(case_file.read_text())
    args = case["args"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        import onnx
        from onnxruntime.transformers.optimizer import optimize_by_fusion, optimize_model

        options = _options_from_diff(args["model_type"], args.get("options"))
        if args.get("function") == "optimize_by_fusion":
            result = optimize_by_fusion(onnx.load(case["input"]), model_type=args["model_type"], num_heads=args["num_heads"],
                                        hidden_size=args["hidden_size"], optimization_options=options)
        else:
            kwargs = {}
            if args.get("opt_level") is not None:
                kwargs["opt_level"] = args["opt_level"]
            result = optimize_model(case["input"], model_type=args["model_type"], num_heads=args["num_heads"],
                                    hidden_size=args["hidden_size"], optimization_options=options,
                                    use_gpu=args.get("use_gpu", False), **kwargs)
    _emit({"ops": [node.op_type for node in result.model.graph.node]})


def _session(path_or_bytes, disable_all: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    if disable_all:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


NOISE_MULTIPLE, NOISE_CAP = 8.0, 1e-3  # what tfopt's own validation allows an ill-conditioned input (docs/validation.md)


def _input_noise(model, feeds, output_names, expected) -> dict[str, float]:
    """Per output, how far the input's own outputs move (relative, as ``within_tolerance`` measures)
    when every float weight moves one ulp up or down at random: its rounding noise. Two tries."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    weights = [(t.name, numpy_helper.to_array(t)) for t in model.graph.initializer
               if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f"]
    noise: dict[str, float] = {}
    for seed in range(2):
        rng = np.random.default_rng(seed)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        kept = []
        for name, array in weights:
            if array.size < 2:
                continue
            up = rng.integers(0, 2, size=array.shape).astype(bool)
            nudged = np.where(np.isfinite(array) & (array != 0), np.nextafter(array, np.where(up, np.inf, -np.inf).astype(array.dtype)), array)
            kept.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(nudged, dtype=array.dtype)))
            options.add_initializer(name, kept[-1])
        try:
            moved = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(output_names, feeds)
        except Exception:  # noqa: BLE001 - no noise measured: the plain bound stands
            return {}
        for name, ref, out in zip(output_names, expected, moved):
            noise[name] = max(noise.get(name, 0.0), within_tolerance(ref, out)[1])
    return noise


def _with_contrib_import(model):
    """A copy of the model that imports every domain its nodes use (for the reference run only)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    imported = {opset.domain for opset in copy.opset_import}
    for domain in sorted({node.domain for node in copy.graph.node} - imported - {"", "ai.onnx"}):
        copy.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    return copy


def relaxed_inputs(model):
    """A copy whose graph inputs have symbolic dims on every axis but the last (batch, seq, ...).

    For fixtures whose declared input shape contradicts their own constants (ONNX Runtime's C++
    fusion tests only look at the graph, they never run it): both models are compared on the
    shapes the computation accepts instead.
    """
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {init.name for init in copy.graph.initializer}
    for value in copy.graph.input:
        if value.name in initializers or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if axis < len(dims) - 1 and dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_param = "batch" if axis == 0 else f"seq{axis}"
    return copy


RELAXED_SIZES = tuple({"batch": b, "seq": n, "past": 0} for b in (1, 2) for n in range(1, 9))
RELAXED_NOTE = "declared input shape relaxed (the input cannot run at it); "


def _relaxed_stage(source, output_model, with_import: bool):
    """(feed model, reference session, candidate session) on relaxed input shapes, or None."""
    try:
        relaxed_source = relaxed_inputs(source)
        if with_import:
            relaxed_source = _with_contrib_import(relaxed_source)
        return (relaxed_source, _session(relaxed_source.SerializeToString(), disable_all=True),
                _session(relaxed_inputs(output_model).SerializeToString(), disable_all=False))
    except Exception:  # noqa: BLE001
        return None


def child_check(input_path: Path, output_path: Path) -> None:
    """Does tfopt's output load, what does it contain, and does it compute what the input computes?"""
    import warnings

    import onnx

    warnings.filterwarnings("ignore")
    result: dict = {"loads": False, "load_error": None, "ops": None, "parity": None, "parity_note": ""}
    output_model = onnx.load(str(output_path))
    result["ops"] = [node.op_type for node in output_model.graph.node]
    try:
        candidate = _session(str(output_path), disable_all=False)
        result["loads"] = True
    except Exception as exc:  # noqa: BLE001
        result["load_error"] = str(exc).splitlines()[0][:200]
        _emit(result)
        return
    source = onnx.load(str(input_path))
    note = ""
    try:
        reference = _session(str(input_path), disable_all=True)
    except Exception:  # noqa: BLE001 - e.g. a contrib op whose domain the input does not import
        try:
            reference = _session(_with_contrib_import(source).SerializeToString(), disable_all=True)
            note = "reference: input with its missing contrib opset import added; "
        except Exception as exc:  # noqa: BLE001
            result["parity"] = "n/a"
            result["parity_note"] = f"input does not load in ONNX Runtime: {str(exc).splitlines()[0][:120]}"
            _emit(result)
            return
    output_names = [o.name for o in source.graph.output]
    candidate_outputs = {o.name for o in candidate.get_outputs()}
    missing = [name for name in output_names if name not in candidate_outputs]
    if missing:
        result["parity"] = "fail"
        result["parity_note"] = note + f"outputs missing: {missing[:3]}"
        _emit(result)
        return
    last_error = ""
    stages = [("", lambda: (source, reference, candidate), FEED_SIZES),
              (RELAXED_NOTE, lambda: _relaxed_stage(source, output_model, bool(note)), RELAXED_SIZES)]
    for how, make_stage, size_list in stages:
        stage = make_stage()
        if stage is None:
            continue
        feed_model, ref_session, cand_session = stage
        for sizes in size_list:
            feeds = make_feeds(feed_model, **sizes)
            try:
                expected = ref_session.run(output_names, feeds)
            except Exception as exc:  # noqa: BLE001 - try the next feed sizes
                last_error = str(exc).splitlines()[0][:120]
                continue
            try:
                got = cand_session.run(output_names, feeds)
            except Exception as exc:  # noqa: BLE001
                result["parity"] = "fail"
                result["parity_note"] = note + how + f"output fails to run: {str(exc).splitlines()[0][:120]}"
                _emit(result)
                return
            worst, failed, errors = 0.0, [], {}
            for name, ref, out in zip(output_names, expected, got):
                ok, error = within_tolerance(ref, out)
                worst, errors[name] = max(worst, error), error
                if not ok:
                    failed.append(name)
            if failed:  # judged as tfopt's validation judges it: within 8x the input's own rounding noise
                noise = _input_noise(feed_model, feeds, output_names, expected)
                if all(errors[n] <= min(NOISE_MULTIPLE * noise.get(n, 0.0), NOISE_CAP) for n in failed):
                    how += f"within {NOISE_MULTIPLE:g}x the input's own rounding noise ({max(noise[n] for n in failed):.1e}); "
                    failed = []
            shape_text = ",".join(f"{k}={v}" for k, v in sizes.items())
            result["parity"] = "ok" if not failed else "fail"
            result["parity_worst"] = worst
            result["parity_note"] = note + how + f"max rel err {worst:.1e} ({shape_text})" + (f"; off: {failed[:3]}" if failed else "")
            _emit(result)
            return
    result["parity"] = "n/a"
    result["parity_note"] = note + f"the input does not run on generated feeds: {last_error}"
    _emit(result)


# ---------------------------------------------------------------------------------------------
# Enumeration
# ---------------------------------------------------------------------------------------------

def _case_name(prefix: str, call: dict, siblings: list[dict], position: int) -> str:
    test = call["test"]
    name = f"{prefix}.{test[5:] if test.startswith('test_') else test}"
    if len(siblings) > 1:
        stems = [Path(s["source"]).stem if s.get("source") else None for s in siblings]
        if all(stems) and len(set(stems)) == len(stems):
            name += f"/{stems[position]}"
        else:
            name += f"#{position}"
            if call["options"]:
                flags = [flag[2:] for flag in tfopt_flags(call) if flag.startswith("--disable")]
                if flags:
                    name += "(" + ",".join(flags) + ")"
    return name


def cpp_inputs(tree: Path) -> tuple[list[tuple[str, str]], str]:
    """[(file name, C++ test name)] of the fusion inputs the transformer-fusion C++ tests load."""
    cc_dir = tree / CPP_TESTS_REL
    found: dict[str, str] = {}
    sources = sorted(cc_dir.glob("*.cc")) if cc_dir.is_dir() else []
    for source in sources:
        text = source.read_text(errors="replace")
        blocks = re.split(r"\n(?=TEST(?:_F)?\()", text)
        for block in blocks:
            header = re.match(r"TEST(?:_F)?\(\s*\w+\s*,\s*(\w+)\s*\)", block)
            if not header or not CPP_TEST_NAME.search(header.group(1)):
                continue
            for file in re.findall(r'"fusion/([\w.-]+\.onnx)"', block):
                found.setdefault(file, header.group(1))
    if found:
        return sorted(found.items()), f"{len(sources)} C++ test sources under {CPP_TESTS_REL}"
    fusion_dir = tree / FUSION_REL
    files = sorted(p.name for p in fusion_dir.glob("*.onnx") if p.name.startswith(CPP_FILE_PREFIXES))
    return [(f, "") for f in files], f"no C++ test sources: file names under {FUSION_REL} by prefix"


def enumerate_cases(tree: Path, work: Path, timeout: float) -> tuple[list[dict], list[str]]:
    """Build every case's input into ``work`` and return the cases (plus notes for the report)."""
    import onnx

    notes: list[str] = []
    cases: list[dict] = []
    used_fusion_files: set[str] = set()
    fusion_dir = (tree / FUSION_REL).resolve()
    capture_dir = work / "_capture"
    shutil.rmtree(capture_dir, ignore_errors=True)
    test_models: dict = {}
    for test_file in PY_TEST_FILES:
        path = tree / PY_TESTS_REL / test_file
        if not path.exists():
            notes.append(f"{test_file}: not in the tree")
            continue
        stem = Path(test_file).stem
        print(f"capturing {test_file} ...", file=sys.stderr, flush=True)
        payload, stderr, seconds, code = run_child(["--_child", "capture", str(tree), test_file, str(capture_dir / stem)], timeout)
        if payload is None:
            notes.append(f"{test_file}: capture failed (exit {code}): {stderr.strip().splitlines()[-1:] }")
            continue
        failed = [o for o in payload["outcomes"] if o["status"] != "pass"]
        notes.append(f"{test_file}: {len(payload['outcomes'])} tests, {len(payload['calls'])} optimizer calls, "
                     f"{len(failed)} of ONNX Runtime's own tests failed here"
                     + (": " + "; ".join(f"{o['test']} ({o['status'][:90]})" for o in failed) if failed else ""))
        if stem == "test_optimizer":
            test_models = payload["test_models"]
        by_test: dict[str, list[dict]] = {}
        for call in payload["calls"]:
            by_test.setdefault(call["test"], []).append(call)
        for test, siblings in by_test.items():
            for position, call in enumerate(siblings):
                name = _case_name(SHORT.get(stem, stem), call, siblings, position)
                args = {k: call[k] for k in ("function", "model_type", "num_heads", "hidden_size", "opt_level", "use_gpu", "options")}
                source = call.get("source")
                if source and not Path(source).resolve().is_relative_to(tree.resolve()):
                    source = None  # a graph the test built and saved in its working directory
                if source and Path(source).parent == fusion_dir:
                    used_fusion_files.add(Path(source).name)
                cases.append(_store_case(work, name, "python", f"{test_file}::{test}", Path(call["saved"]), args,
                                         source=source, ort_test_status=call.get("ort_test_status")))
    # stored models no enabled test loads
    captured_sources = {c["source_file"] for c in cases if c.get("source_file")}
    for key, info in test_models.items():
        if not info["exists"] or info["path"] in captured_sources:
            continue
        args = next((dict(v) for prefix, v in STORED_ARGS.items() if key.startswith(prefix)), None)
        if args is None:
            notes.append(f"TEST_MODELS[{key}]: no arguments known, left out")
            continue
        args.update(function="optimize_model", opt_level=None, use_gpu=False, options={})
        cases.append(_store_case(work, f"stored.{key}", "stored", f"test_optimizer.py TEST_MODELS[{key}] ({info['file']})",
                                 Path(info["path"]), args, source=info["path"]))
    missing_models = [f"{k} ({v['file']})" for k, v in test_models.items() if not v["exists"]]
    if missing_models:
        notes.append("TEST_MODELS entries whose file is not in the tree: " + ", ".join(missing_models))
    # C++ fusion inputs
    files, how = cpp_inputs(tree)
    notes.append(f"C++ inputs from {how}: {len(files)} files, {len([f for f, _ in files if f in used_fusion_files])} already run by a python case")
    for file, test_name in files:
        if file in used_fusion_files:
            continue
        path = tree / FUSION_REL / file
        if not path.exists():
            notes.append(f"fusion/{file}: not in the tree")
            continue
        model = onnx.load(str(path))
        gpt2 = "gpt2" in file or any(i.name.lower().startswith("past") for i in model.graph.input)
        args = {"function": "optimize_model", "model_type": "gpt2" if gpt2 else "bert", "num_heads": 0, "hidden_size": 0,
                "opt_level": None, "use_gpu": False, "options": {}}
        cases.append(_store_case(work, f"cpp.{Path(file).stem}", "cpp", f"{test_name} (fusion/{file})", path, args, source=str(path)))
    shutil.rmtree(capture_dir, ignore_errors=True)
    return cases, notes


def _store_case(work: Path, name: str, kind: str, origin: str, model_path: Path, args: dict, source=None, ort_test_status=None) -> dict:
    import onnx

    file_stem = safe_name(name)
    target = work / f"{file_stem}.onnx"
    onnx.save(onnx.load(str(model_path)), str(target))
    case = {"name": name, "kind": kind, "origin": origin, "input": str(target), "args": args,
            "source_file": str(Path(source).resolve()) if source else None}
    if ort_test_status is not None:
        case["ort_test_status"] = ort_test_status
    return case


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def default_tfopt() -> str:
    here = Path(sys.executable).parent / "tfopt"
    return str(here) if here.exists() else (shutil.which("tfopt") or "tfopt")


def snapshot_pythonpath(repo: Path, revision: str, dest: Path) -> tuple[str, str]:
    """Extract tfopt's packages at a commit into ``dest``; (PYTHONPATH putting them first, full sha).

    The repository's packages are installed editable, so edits in progress in the working tree
    would change tfopt mid-run; a snapshot measures one commit. The editable installs' finders
    come after ``sys.path`` (PYTHONPATH) in ``sys.meta_path``, so the snapshot wins.
    """
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", revision], capture_output=True, text=True, check=True).stdout.strip()
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha, "core", "plugins", "examples"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    paths = [dest / "core"] + sorted(p for group in ("plugins", "examples") for p in (dest / group).glob("*") if p.is_dir())
    return os.pathsep.join(str(p) for p in paths), sha


def run_case(case: dict, tfopt: str, work: Path, timeout: float, env: dict | None = None) -> dict:
    case_file = work / f"{safe_name(case['name'])}.json"
    out_dir = work / "_out"
    out_dir.mkdir(exist_ok=True)
    output = out_dir / f"{safe_name(case['name'])}.opt.onnx"
    for stale in out_dir.glob(f"{output.name}*"):
        stale.unlink()
    command = tfopt_command(tfopt, case["input"], str(output), case["args"])
    case["tfopt_command"] = " ".join(shlex.quote(part) for part in command)
    case_file.write_text(json.dumps(case, indent=1))
    row: dict = {"name": case["name"], "kind": case["kind"], "input": case["input"], "command": case["tfopt_command"]}
    payload, stderr, seconds, code = run_child(["--_child", "ort", str(case_file)], timeout)
    row["ort_seconds"] = round(seconds, 2)
    if payload is None:
        row["ort"] = None
        row["ort_error"] = "timeout" if code is None else first_error_line(stderr)[:160]
    else:
        row["ort"] = family_counts(payload["ops"])
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        row["tfopt_exit"] = done.returncode
        row["tfopt_error"] = first_error_line(done.stderr) if done.returncode else ""
        warnings = [line.strip() for line in done.stderr.splitlines() if "warn" in line.lower()]
        row["tfopt_warning"] = warnings[0][:200] if warnings else ""
    except subprocess.TimeoutExpired:
        row["tfopt_exit"] = None
        row["tfopt_error"] = f"timeout after {timeout:.0f} s"
    row["tfopt_seconds"] = round(time.perf_counter() - start, 2)
    row.update(tfopt=None, loads=None, parity=None, parity_note="")
    if row["tfopt_exit"] == 0 and output.exists():
        payload, stderr, _, code = run_child(["--_child", "check", case["input"], str(output)], timeout)
        if payload is None:
            row["loads"] = False
            row["parity_note"] = "check crashed: " + first_error_line(stderr)[:120]
        else:
            row["tfopt"] = family_counts(payload["ops"]) if payload["ops"] is not None else None
            row["loads"] = payload["loads"]
            row["load_error"] = payload.get("load_error")
            row["parity"] = payload["parity"]
            row["parity_note"] = payload["parity_note"]
    verdict(row)
    return row


def verdict(row: dict) -> dict:
    """Fill row['pass'], row['category'] and row['missing'] (the families tfopt fused less of)."""
    row["missing"] = []
    if row.get("tfopt_exit") is None:
        category = "tfopt timeout"
    elif row["tfopt_exit"] != 0:
        category = error_category(row.get("tfopt_error", ""))
    elif not row.get("loads"):
        category = "output does not load in ONNX Runtime"
    else:
        row["missing"] = shortfall(row.get("ort") or {}, row.get("tfopt") or {})
        if row["missing"]:
            category = "fuses less than ORT: " + ", ".join(row["missing"])
        elif row.get("parity") == "fail":
            category = "parity"
        elif row.get("parity") != "ok":
            category = "no parity reference"
        else:
            category = ""
    row["pass"] = category == ""
    row["category"] = category
    return row


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def exit_text(row: dict) -> str:
    if row.get("tfopt_exit") == 0:
        return "0"
    code = "timeout" if row.get("tfopt_exit") is None else str(row["tfopt_exit"])
    message = row.get("tfopt_error", "")
    if row.get("input"):  # the case file's directory says nothing: keep its name only
        message = message.replace(str(Path(row["input"]).parent) + os.sep, "")
    return f"{code}: {message[:100]}"


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for row in rows:
        loads = "-" if row.get("loads") is None else ("yes" if row["loads"] else "no")
        parity = row.get("parity") or "-"
        if row.get("parity_note"):
            parity += f" ({row['parity_note']})"
        ort_counts = format_counts(row.get("ort")) if row.get("ort") is not None else f"error: {row.get('ort_error', '')[:60]}"
        out.append([row["name"], ort_counts, format_counts(row.get("tfopt")), exit_text(row), loads, parity,
                    "PASS" if row["pass"] else "FAIL", row["category"]])
    return out


HEADER = ["case", "ORT fused", "tfopt fused", "tfopt exit/err", "loads", "parity", "verdict", "category"]


def category_table(rows: list[dict]) -> list[tuple[str, int, list[str]]]:
    groups: dict[str, list[str]] = {}
    for row in rows:
        if not row["pass"]:
            groups.setdefault(row["category"], []).append(row["name"])
    return sorted(((k, len(v), v) for k, v in groups.items()), key=lambda item: (-item[1], item[0]))


def print_report(rows: list[dict]) -> None:
    for cells in table_rows(rows):
        print(" | ".join(cells), flush=True)
    passed = sum(row["pass"] for row in rows)
    print(f"\n{passed}/{len(rows)} pass")
    for kind in ("python", "stored", "cpp"):
        subset = [row for row in rows if row["kind"] == kind]
        if subset:
            print(f"  {kind}: {sum(r['pass'] for r in subset)}/{len(subset)}")
    print("\nfailure categories:")
    for category, count, names in category_table(rows):
        print(f"  {count:3d}  {category}: {', '.join(names)}")


def machine_lines() -> list[str]:
    lines = []
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        flags = fields.get("Flags", "").split()
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
        lines.append(f"CPU: {fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, "
                     f"ISA {', '.join(isa) or 'no AVX2'}, L3 {fields.get('L3 cache', '?').strip()} (lscpu)")
    except (OSError, subprocess.SubprocessError):
        lines.append(f"CPU: {platform.processor() or '?'}")
    versions = []
    for package in ("torch", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "sympy", "numpy"):
        try:
            from importlib.metadata import version

            versions.append(f"{package} {version(package.replace('_', '-'))}")
        except Exception:  # noqa: BLE001
            versions.append(f"{package} (not installed)")
    try:
        from importlib.metadata import version

        versions.insert(0, f"tfopt {version('tfopt')}")
    except Exception:  # noqa: BLE001
        pass
    lines.append("Versions: " + ", ".join(versions) + f", Python {platform.python_version()}")
    lines.append(f"Date: {datetime.date.today().isoformat()}")
    return lines


KEEP_MARKER = "<!-- hand-written below: kept when scripts/ort_suite.py rewrites this file -->"


def kept_section(path: Path | None) -> str:
    """The hand-written part of an existing report (from KEEP_MARKER on), or just the marker."""
    if path is not None and path.exists():
        text = path.read_text()
        if KEEP_MARKER in text:
            return text[text.index(KEEP_MARKER):]
    return KEEP_MARKER + "\n"


def markdown(rows: list[dict], notes: list[str], tree_label: str, seconds: float, tfopt_source: str, path: Path | None = None) -> str:
    def esc(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    passed = sum(row["pass"] for row in rows)
    kinds = {kind: [row for row in rows if row["kind"] == kind] for kind in ("python", "stored", "cpp")}
    lines = [
        "# ONNX Runtime's own optimizer tests, run through tfopt",
        "",
        "ONNX Runtime tests its transformer optimizer (`onnxruntime.transformers.optimizer`) on small",
        "graphs: the ones `onnxruntime/test/python/transformers/` builds (`bert_model_generator.py`,",
        "`gpt2_model_generator.py`, torch exports of the Gelu spellings) or loads (`test_data/models/`,",
        "`onnxruntime/test/testdata/transform/fusion/`). `scripts/ort_suite.py` runs each of those graphs",
        "through ONNX Runtime's optimizer and through `tfopt optimize` with the same arguments, and checks",
        "what tfopt writes. Generated by `scripts/ort_suite.py --markdown`; the part after the marker at the",
        "end is written by hand and kept when the script rewrites the file.",
        "",
        "A case **passes** when `tfopt optimize` exits 0, its output loads in an ONNX Runtime CPU session, it",
        "has at least as many fused ops as ONNX Runtime's result in every family, and every output of the",
        "input model is reproduced within 1e-4 x max(1, |reference|) on generated feeds (ids within the",
        "embedding tables, 2-D masks of ones with the end of every second row padded, floats from N(0, 1);",
        "batch 2, sequence 5, past 3; other sizes when the input cannot run on those, and when it cannot run",
        "at its declared input shape at all, both models with that shape relaxed to symbols). The reference",
        "is the input itself in ONNX Runtime with graph optimizations off; an input whose own rounding noise",
        "(its outputs' move when every float weight moves one ulp) exceeds that is held, as tfopt's validation",
        "holds it, to 8x its noise (at most 1e-3). Families (counts in the table):",
        "`att` Attention + MultiHeadAttention + GroupQueryAttention, `emb` EmbedLayerNormalization, `sln`",
        "SkipLayerNormalization + SkipSimplifiedLayerNormalization (+ `Sum`: the CPU target's form of a",
        "SkipLayerNormalization, `Sum` + `LayerNormalization`; no input has a Sum of its own), `norm` every",
        "normalization op (the `sln` and `emb` ones included, so a LayerNorm absorbed into a fused op still",
        "counts), `gelu` Gelu + FastGelu + BiasGelu + QuickGelu + GemmFastGelu, `badd` BiasAdd.",
        "",
        "## How to run",
        "",
        "The script needs an ONNX Runtime source tree: a checkout, or just the test trees extracted from one",
        "(`git archive HEAD onnxruntime/test/python/transformers onnxruntime/test/testdata/transform/fusion",
        "onnxruntime/test/optimizer | tar -x -C /tmp/ort-tree`), onnxruntime with `sympy` (for its",
        "optimizer), torch (for the Gelu tests' exports) and tfopt. No network.",
        "",
        "```",
        "python scripts/ort_suite.py --ort-tree /tmp/ort-tree --markdown docs/benchmark-ort-suite.md",
        "python scripts/ort_suite.py --ort-tree /tmp/ort-tree --reuse --cases gpt2   # cases whose name contains gpt2",
        "```",
        "",
        "The inputs are left in `--work` (default `/tmp/ort-suite-cases/`): `<case>.onnx` and `<case>.json`",
        "(source, ONNX Runtime's arguments, the `tfopt optimize` command); one case is reproduced with the",
        "command in its JSON. `--tfopt-commit REV` measures tfopt as committed at REV instead of the working",
        "tree. Each step runs in a child process with a timeout (`--timeout`, 300 s).",
        "",
        "## Result",
        "",
        f"**{passed}/{len(rows)} pass**: " + ", ".join(
            f"{kind} {sum(r['pass'] for r in subset)}/{len(subset)}" for kind, subset in kinds.items() if subset),
        "",
        *[f"- {line}" for line in machine_lines()],
        f"- tfopt: {tfopt_source}",
        f"- ONNX Runtime tree: {tree_label}",
        f"- Wall time of the run: {seconds / 60:.1f} min (2 cores shared with other work)",
        "",
        "## Cases",
        "",
    ]
    lines += [f"- {esc(note)}" for note in notes]
    lines += ["", "## Per case", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for cells in table_rows(rows):
        lines.append("| " + " | ".join(esc(cell) for cell in cells) + " |")
    lines += ["", "## Failure categories", "", "| category | cases | which |", "|---|---|---|"]
    for category, count, names in category_table(rows):
        lines.append(f"| {esc(category)} | {count} | {esc(', '.join(names))} |")
    return "\n".join(lines) + "\n\n" + kept_section(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_child"]:
        kind = argv[1]
        if kind == "capture":
            child_capture(Path(argv[2]), argv[3], Path(argv[4]))
        elif kind == "ort":
            child_ort(Path(argv[2]))
        elif kind == "check":
            child_check(Path(argv[2]), Path(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ort-tree", type=Path, required=True, help="ONNX Runtime checkout or extracted tree root")
    parser.add_argument("--ort-tree-label", default=None, help="how the report names the tree (repository, commit)")
    parser.add_argument("--cases", default=None, help="run only cases whose name contains this")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ort-suite-cases")
    parser.add_argument("--markdown", type=Path, default=None, help="write the results (tables only) here")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per child step")
    parser.add_argument("--tfopt", default=default_tfopt(), help="the tfopt executable")
    parser.add_argument("--tfopt-commit", default=None, metavar="REV",
                        help="run tfopt as committed at REV of this repository (a snapshot on PYTHONPATH), not the working tree")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: re-judge --work/results.json and rewrite --markdown from it")
    parser.add_argument("--list", action="store_true", help="enumerate and build the cases, run nothing")
    parser.add_argument("--reuse", action="store_true", help="reuse --work/cases.json instead of enumerating again")
    args = parser.parse_args(argv)
    tree = args.ort_tree.resolve()
    if not (tree / PY_TESTS_REL).is_dir():
        parser.error(f"{tree} has no {PY_TESTS_REL}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    index = work / "cases.json"
    if (args.reuse or args.render) and index.exists():
        saved = json.loads(index.read_text())
        cases, notes = saved["cases"], saved["notes"]
    else:
        cases, notes = enumerate_cases(tree, work, args.timeout)
        for case in cases:
            command = tfopt_command("tfopt", case["input"], str(work / "_out" / f"{safe_name(case['name'])}.opt.onnx"), case["args"])
            case["tfopt_command"] = " ".join(shlex.quote(part) for part in command)
            (work / f"{safe_name(case['name'])}.json").write_text(json.dumps(case, indent=1))
        index.write_text(json.dumps({"tree": str(tree), "cases": cases, "notes": notes}, indent=1))
    if args.render:
        saved_rows = json.loads((work / "results.json").read_text())
        meta = saved_rows.get("meta", {}) if isinstance(saved_rows, dict) else {}
        rows = [verdict(row) for row in (saved_rows["rows"] if isinstance(saved_rows, dict) else saved_rows)]
        tfopt_source = meta.get("tfopt_source") or (f"commit {args.tfopt_commit}" if args.tfopt_commit else "unknown")
        seconds = meta.get("seconds") or sum(row.get("ort_seconds", 0) + row.get("tfopt_seconds", 0) for row in rows)
        print_report(rows)
        if args.markdown:
            label = args.ort_tree_label or meta.get("tree_label") or f"`{tree}`"
            args.markdown.write_text(markdown(rows, notes, label, seconds, tfopt_source, args.markdown))
            print(f"wrote {args.markdown}")
        return 0
    counts = {kind: sum(c["kind"] == kind for c in cases) for kind in ("python", "stored", "cpp")}
    print(f"{len(cases)} cases: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for note in notes:
        print(f"  {note}")
    for case in cases:
        print(f"  {case['name']}  <- {case['origin']}  [{' '.join(tfopt_flags(case['args']))}]")
    if args.cases:
        cases = [case for case in cases if args.cases in case["name"]]
        print(f"{len(cases)} cases match {args.cases!r}")
    if args.list:
        return 0
    env, tfopt_source = None, "the working tree (editable install)"
    if args.tfopt_commit:
        repo = Path(__file__).resolve().parents[1]
        pythonpath, sha = snapshot_pythonpath(repo, args.tfopt_commit, work / "_tfopt_snapshot")
        env = dict(os.environ, PYTHONPATH=pythonpath)
        tfopt_source = f"commit {sha[:12]} (`--tfopt-commit {args.tfopt_commit}`)"
    where = subprocess.run([str(Path(args.tfopt).parent / "python") if Path(args.tfopt).parent.joinpath("python").exists() else sys.executable,
                            "-c", "import tfopt; print(tfopt.__file__)"], capture_output=True, text=True, env=env).stdout.strip()
    print(f"tfopt: {args.tfopt}, {tfopt_source}, imports {where}")
    rows = []
    for number, case in enumerate(cases, 1):
        row = run_case(case, args.tfopt, work, args.timeout, env)
        row["tfopt_source"] = tfopt_source
        rows.append(row)
        print(f"[{number}/{len(cases)}] " + " | ".join(table_rows([row])[0]), flush=True)
    print()
    print_report(rows)
    seconds = time.perf_counter() - start
    label = args.ort_tree_label or f"`{tree}`"
    meta = {"tfopt_source": tfopt_source, "seconds": seconds, "tree_label": label}
    results = work / "results.json"
    if args.cases and results.exists():
        # a partial run replaces its own rows and keeps the others (each row names its tfopt)
        saved = json.loads(results.read_text())
        old_rows = saved["rows"] if isinstance(saved, dict) else saved
        fresh = {row["name"]: row for row in rows}
        rows = [fresh.pop(row["name"], row) for row in old_rows] + list(fresh.values())
        sources = sorted({row.get("tfopt_source", "?") for row in rows})
        meta["tfopt_source"] = tfopt_source if len(sources) == 1 else "mixed: " + "; ".join(sources)
        meta["seconds"] = (saved.get("meta", {}).get("seconds") or 0) if isinstance(saved, dict) else 0
    results.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(rows, notes, label, seconds, tfopt_source, args.markdown))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
