"""Fuzz `tfopt optimize` with mutated ONNX inputs (issue 9, "bad input, always one line").

Every case must end one of two ways: exit 2 with one ``tfopt: error:`` line and nothing
written, or exit 0 with a model ONNX Runtime loads and that computes what the input
computes (when ONNX Runtime can run the input). The error line holds at most 200
characters (the case folder's path not counted: paths are as long as the user makes them)
and quotes none of ONNX Runtime's raw text (issue 17); exit 0 with "parity not checked" is
a failure too (an input ONNX Runtime cannot run on generated inputs is an error). Whatever
happens, the input's files keep their bytes. Seeds are small models tfopt fuses: a 1-layer BERT and a 1-layer GPT-2
exported by the adapters' own ``export_model`` (when those adapters are installed) and
three hand-built graphs. Each case mutates one seed, deterministically for its index.

    python tests/fuzz_onnx.py --cases 2000            # summary table of outcomes
    python tests/fuzz_onnx.py --cases 50 --start 300 --show 20

``tests/test_fuzz.py`` runs a bounded set in CI and a large one under ``-m slow``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MASTER_SEED = 9  # the number; every case's randomness derives from it and the case index
CASE_TIMEOUT_S = 120
MODEL_FILE = "model.onnx"
OUTPUT_FILE = "model.opt.onnx"
PARITY_REL_TOLERANCE = 1e-3

# Outcomes. The first three are fine; every other one is a bug.
OK_PARITY = "exit 0, output matches input"
OK_UNCHECKED = "exit 0, output loads (input not runnable in ORT)"
REFUSED = "exit 2, one line"
REFUSED_RUNNABLE = "exit 2, one line (ORT runs the input)"
TRACEBACK = "traceback"
HANG = "hang"
BAD_EXIT = "exit code not 0/2"
NOT_ONE_LINE = "error not one line"
LEFT_FILES = "files left at OUT after failure"
INPUT_CHANGED = "input files changed"
NO_OUTPUT = "exit 0 but OUT missing / temp files beside it"
OUTPUT_UNLOADABLE = "exit 0, ORT cannot load output"
OUTPUT_FAILS = "exit 0, output fails where input runs"
OUTPUT_DIFFERS = "exit 0, output differs from input"
LONG_LINE = "error line over 200 characters"
RAW_TEXT = "error quotes ONNX Runtime's raw text"
UNCHECKED_WRITTEN = "exit 0, parity not checked"
FINE = (OK_PARITY, OK_UNCHECKED, REFUSED, REFUSED_RUNNABLE)
CATEGORIES = FINE + (
    TRACEBACK, HANG, BAD_EXIT, NOT_ONE_LINE, LONG_LINE, RAW_TEXT, LEFT_FILES, INPUT_CHANGED, NO_OUTPUT, OUTPUT_UNLOADABLE,
    OUTPUT_FAILS, OUTPUT_DIFFERS, UNCHECKED_WRITTEN,
)
ERROR_LINE_LIMIT = 200  # characters of the `tfopt: error:` line, the case folder's own path not counted
# What ONNX Runtime's text says about itself, not about the model: an error line must not quote it.
RAW_MARKERS = ("[ONNXRuntimeError]", "onnxruntime_src", "Status Message:", "onnxruntime::")


# ----------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Seed:
    name: str
    model_type: str  # what `tfopt optimize --model_type` gets
    model: bytes  # serialized ModelProto, weights inline
    weight: float = 1.0  # relative chance of being picked (fusing the adapter seeds costs more)
    exported: bool = False  # exported by an adapter (not hand-built)


def _model(nodes, inputs, outputs, initializers, opset: int = 17) -> bytes:
    graph = helper.make_graph(nodes, "fuzz_seed", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fuzz_onnx")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _tensor(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _scalar(name: str, value: float) -> TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def layer_norm_mlp_seed() -> Seed:
    """Decomposed LayerNorm -> MatMul+bias -> Erf Gelu -> MatMul+bias -> residual -> LayerNormalization.

    tfopt fuses LayerNormalization, BiasGelu and SkipLayerNormalization here.
    """
    rng = np.random.default_rng(1)
    hidden, inner = 16, 32
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", hidden])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", hidden])
    n = helper.make_node
    nodes = [
        n("ReduceMean", ["x"], ["mean"], axes=[-1]),
        n("Sub", ["x", "mean"], ["centered"]),
        n("Pow", ["centered", "two"], ["square"]),
        n("ReduceMean", ["square"], ["variance"], axes=[-1]),
        n("Add", ["variance", "eps"], ["variance_eps"]),
        n("Sqrt", ["variance_eps"], ["std"]),
        n("Div", ["centered", "std"], ["normalized"]),
        n("Mul", ["normalized", "ln_gamma"], ["scaled"]),
        n("Add", ["scaled", "ln_beta"], ["ln"]),
        n("MatMul", ["ln", "w1"], ["h"]),
        n("Add", ["h", "b1"], ["hb"]),
        n("Div", ["hb", "sqrt2"], ["hb_scaled"]),
        n("Erf", ["hb_scaled"], ["erf"]),
        n("Add", ["erf", "one"], ["erf_one"]),
        n("Mul", ["hb", "erf_one"], ["gelu_x2"]),
        n("Mul", ["gelu_x2", "half"], ["gelu"]),
        n("MatMul", ["gelu", "w2"], ["o"]),
        n("Add", ["o", "b2"], ["ob"]),
        n("Add", ["ob", "x"], ["residual"]),
        n("LayerNormalization", ["residual", "ln2_gamma", "ln2_beta"], ["y"], axis=-1, epsilon=1e-5),
    ]
    initializers = [
        _scalar("two", 2.0), _scalar("eps", 1e-5), _scalar("sqrt2", float(np.sqrt(2.0))), _scalar("one", 1.0),
        _scalar("half", 0.5),
        numpy_helper.from_array((1 + rng.standard_normal(hidden) * 0.1).astype(np.float32), "ln_gamma"),
        _tensor(rng, "ln_beta", hidden, scale=0.1), _tensor(rng, "w1", hidden, inner), _tensor(rng, "b1", inner, scale=0.1),
        _tensor(rng, "w2", inner, hidden), _tensor(rng, "b2", hidden, scale=0.1),
        numpy_helper.from_array((1 + rng.standard_normal(hidden) * 0.1).astype(np.float32), "ln2_gamma"),
        _tensor(rng, "ln2_beta", hidden, scale=0.1),
    ]
    return Seed("layer_norm_mlp", "bert", _model(nodes, [x], [y], initializers), weight=2.0)


def causal_scores_seed() -> Seed:
    """Self-attention scores with a LessOrEqual causal mask, Softmax, then a tanh (Fast)Gelu.

    tfopt fuses the FastGelu; the mask's comparison is what a swapped-comparison mutation changes.
    """
    rng = np.random.default_rng(2)
    width = 8
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", "sequence", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", width])
    n = helper.make_node
    nodes = [
        n("MatMul", ["q", "wq"], ["query"]),
        n("Transpose", ["q"], ["key_t"], perm=[0, 2, 1]),
        n("MatMul", ["query", "key_t"], ["scores"]),
        n("Mul", ["scores", "scale"], ["scaled_scores"]),
        n("Shape", ["q"], ["q_shape"]),
        n("Gather", ["q_shape", "one_i"], ["length"], axis=0),
        n("Range", ["zero_i", "length", "one_i"], ["positions"]),
        n("Unsqueeze", ["positions", "axis1"], ["rows"]),
        n("Unsqueeze", ["positions", "axis0"], ["cols"]),
        n("LessOrEqual", ["cols", "rows"], ["causal"]),
        n("Where", ["causal", "scaled_scores", "minus_big"], ["masked"]),
        n("Softmax", ["masked"], ["probs"], axis=-1),
        n("MatMul", ["probs", "q"], ["context"]),
        n("Pow", ["context", "three"], ["cube"]),
        n("Mul", ["cube", "coeff"], ["cube_coeff"]),
        n("Add", ["context", "cube_coeff"], ["inner"]),
        n("Mul", ["inner", "sqrt_2_over_pi"], ["inner_scaled"]),
        n("Tanh", ["inner_scaled"], ["tanh"]),
        n("Add", ["tanh", "one"], ["tanh_one"]),
        n("Mul", ["context", "half"], ["half_context"]),
        n("Mul", ["half_context", "tanh_one"], ["y"]),
    ]
    initializers = [
        _tensor(rng, "wq", width, width), _scalar("scale", 1 / np.sqrt(width)),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero_i"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one_i"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        _scalar("minus_big", -1e4), _scalar("three", 3.0), _scalar("coeff", 0.044715),
        _scalar("sqrt_2_over_pi", float(np.sqrt(2 / np.pi))), _scalar("one", 1.0), _scalar("half", 0.5),
    ]
    return Seed("causal_scores", "gpt2", _model(nodes, [q], [y], initializers), weight=2.0)


def bias_gelu_seed() -> Seed:
    """Opset-20 Gelu after MatMul+bias, a Cast and a Softmax: BiasGelu, and attributes to mutate."""
    rng = np.random.default_rng(3)
    width, inner = 8, 16
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", width])
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "w1"], ["h"]),
        n("Add", ["h", "b1"], ["hb"]),
        n("Gelu", ["hb"], ["gelu"], approximate="none"),
        n("MatMul", ["gelu", "w2"], ["o"]),
        n("Add", ["o", "b2"], ["ob"]),
        n("Cast", ["ob"], ["ob64"], to=TensorProto.DOUBLE),
        n("Cast", ["ob64"], ["ob32"], to=TensorProto.FLOAT),
        n("Softmax", ["ob32"], ["y"], axis=-1),
    ]
    initializers = [
        _tensor(rng, "w1", width, inner), _tensor(rng, "b1", inner, scale=0.1), _tensor(rng, "w2", inner, width),
        _tensor(rng, "b2", width, scale=0.1),
    ]
    return Seed("bias_gelu", "bert", _model(nodes, [x], [y], initializers, opset=20), weight=2.0)


def handmade_seeds() -> list[Seed]:
    return [layer_norm_mlp_seed(), causal_scores_seed(), bias_gelu_seed()]


def adapter_seeds(work_dir: Path) -> list[Seed]:
    """A 1-layer BERT and a 1-layer GPT-2, exported (legacy exporter) by the adapters themselves.

    Empty where torch or the adapters are not installed (the TensorFlow deployment).
    """
    try:
        from transformers import BertConfig, GPT2Config
        from tfopt_bert_pt import export as bert_export, models as bert_models
        from tfopt_gpt2 import export as gpt2_export, models as gpt2_models
    except ImportError:
        return []
    from tfopt.results import RunContext

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bert = bert_models.random_model(
        BertConfig(vocab_size=128, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                   max_position_embeddings=32, type_vocab_size=2),
        attn_implementation="eager",
    )
    gpt2 = gpt2_models.random_model(
        GPT2Config(vocab_size=128, n_embd=16, n_layer=1, n_head=2, n_positions=32, initializer_range=0.2,
                   bos_token_id=0, eos_token_id=0)
    )
    seeds = []
    for name, model_type, family, export, model in (
        ("bert", "bert", "bert_pt", bert_export, bert), ("gpt2", "gpt2", "gpt2", gpt2_export, gpt2)
    ):
        ctx = RunContext(family=family, source=name, work_dir=work_dir / name, options={"exporter": "legacy"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = export.export_model(ctx, model, f"fuzz-{name}")
        proto = onnx.load(str(result.model_path))  # external data (none at this size) read in
        seeds.append(Seed(name, model_type, proto.SerializeToString(), exported=True))
    return seeds


def build_seeds(work_dir: str | Path) -> list[Seed]:
    return handmade_seeds() + adapter_seeds(Path(work_dir))


# ----------------------------------------------------------------------------- mutations


@dataclass
class Mutant:
    """What a mutation works on: a private copy of the seed's proto, its case's RNG and directory."""

    model: onnx.ModelProto
    rng: random.Random
    folder: Path  # the input's folder (inside the case directory)
    external: bool  # save weights as external data
    note: str = ""

    def save(self, model: onnx.ModelProto | None = None, *, external: bool | None = None, name: str = MODEL_FILE) -> Path:
        return save_proto(self.model if model is None else model, self.folder / name,
                          external=self.external if external is None else external)

    def say(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


def save_proto(model: onnx.ModelProto, path: Path, *, external: bool) -> Path:
    model = copy.deepcopy(model)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=64)
    else:
        path.write_bytes(model.SerializeToString())
    return path


MUTATIONS: dict[str, Callable[[Mutant], Path]] = {}
BYTE_MUTATIONS: set[str] = set()
EXTERNAL_MUTATIONS: set[str] = set()


def mutation(name: str, *, kind: str = "structure"):
    def register(function):
        MUTATIONS[name] = function
        if kind == "bytes":
            BYTE_MUTATIONS.add(name)
        elif kind == "external":
            EXTERNAL_MUTATIONS.add(name)
        return function

    return register


def _target_file(m: Mutant) -> Path:
    """Save the model; the file a byte mutation hits: the .onnx, or its .data when there is one."""
    path = m.save()
    data = path.with_name(path.name + ".data")
    if data.exists() and m.rng.random() < 0.5:
        m.say("in .data")
        return data
    return path


@mutation("unchanged")
def unchanged(m: Mutant) -> Path:
    """The control: the seed as it is (inline or with external data) must optimize and match."""
    return m.save()


@mutation("flip_bytes", kind="bytes")
def flip_bytes(m: Mutant) -> Path:
    target = _target_file(m)
    data = bytearray(target.read_bytes())
    for _ in range(m.rng.randint(1, 16)):
        data[m.rng.randrange(len(data))] ^= 1 << m.rng.randrange(8)
    target.write_bytes(bytes(data))
    return m.folder / MODEL_FILE


@mutation("truncate_bytes", kind="bytes")
def truncate_bytes(m: Mutant) -> Path:
    target = _target_file(m)
    data = target.read_bytes()
    target.write_bytes(data[: m.rng.randrange(len(data))])
    return m.folder / MODEL_FILE


@mutation("append_bytes", kind="bytes")
def append_bytes(m: Mutant) -> Path:
    target = _target_file(m)
    tail = bytes(m.rng.randrange(256) for _ in range(m.rng.randint(1, 64)))
    target.write_bytes(target.read_bytes() + tail)
    return m.folder / MODEL_FILE


@mutation("overwrite_span", kind="bytes")
def overwrite_span(m: Mutant) -> Path:
    target = _target_file(m)
    data = bytearray(target.read_bytes())
    start = m.rng.randrange(len(data))
    length = min(len(data) - start, m.rng.randint(1, 32))
    data[start : start + length] = bytes(m.rng.randrange(256) for _ in range(length))
    target.write_bytes(bytes(data))
    return m.folder / MODEL_FILE


def _nodes(m: Mutant, where: Callable[[onnx.NodeProto], bool] = lambda node: True) -> list[int]:
    return [i for i, node in enumerate(m.model.graph.node) if where(node)]


def _value_names(graph: onnx.GraphProto) -> list[str]:
    names = [v.name for v in graph.input] + [t.name for t in graph.initializer]
    names += [out for node in graph.node for out in node.output if out]
    return list(dict.fromkeys(names))


@mutation("delete_nodes")
def delete_nodes(m: Mutant) -> Path:
    graph = m.model.graph
    for _ in range(m.rng.randint(1, 3)):
        if len(graph.node):
            index = m.rng.randrange(len(graph.node))
            m.say(f"deleted {graph.node[index].op_type}")
            del graph.node[index]
    return m.save()


@mutation("rewire_input")
def rewire_input(m: Mutant) -> Path:
    graph = m.model.graph
    candidates = _nodes(m, lambda node: len(node.input) > 0)
    names = _value_names(graph)
    for _ in range(m.rng.randint(1, 2)):
        node = graph.node[m.rng.choice(candidates)]
        slot = m.rng.randrange(len(node.input))
        node.input[slot] = m.rng.choice(names)
        m.say(f"{node.op_type} input {slot} <- {node.input[slot]}")
    return m.save()


@mutation("dangling_input")
def dangling_input(m: Mutant) -> Path:
    node = m.model.graph.node[m.rng.choice(_nodes(m, lambda node: len(node.input) > 0))]
    node.input[m.rng.randrange(len(node.input))] = "fuzz_nothing_defines_this"
    m.say(f"{node.op_type} reads an undefined value")
    return m.save()


def _consumers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    readers = defaultdict(list)
    for index, node in enumerate(graph.node):
        for name in node.input:
            readers[name].append(index)
    return readers


@mutation("cycle")
def cycle(m: Mutant) -> Path:
    """A node reads the output of a node downstream of it (or its own output)."""
    graph = m.model.graph
    start = m.rng.choice(_nodes(m, lambda node: len(node.input) > 0 and len(node.output) > 0))
    readers = _consumers(graph)
    downstream, frontier = {start}, [start]
    while frontier:
        index = frontier.pop()
        for name in graph.node[index].output:
            for reader in readers.get(name, []):
                if reader not in downstream:
                    downstream.add(reader)
                    frontier.append(reader)
    later = m.rng.choice(sorted(downstream))
    node = graph.node[start]
    node.input[m.rng.randrange(len(node.input))] = graph.node[later].output[0]
    m.say(f"{node.op_type} reads {graph.node[later].op_type}'s output" + (" (itself)" if later == start else ""))
    return m.save()


@mutation("shuffle_nodes")
def shuffle_nodes(m: Mutant) -> Path:
    """Valid nodes, not in topological order (ORT sorts them itself)."""
    graph = m.model.graph
    nodes = list(graph.node)
    m.rng.shuffle(nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    return m.save()


_WRONG_TYPES = (TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT16, TensorProto.INT8,
                TensorProto.BOOL, TensorProto.STRING, TensorProto.UNDEFINED, TensorProto.BFLOAT16, 77)


@mutation("initializer_dtype")
def initializer_dtype(m: Mutant) -> Path:
    tensor = m.rng.choice(list(m.model.graph.initializer))
    tensor.data_type = m.rng.choice([t for t in _WRONG_TYPES if t != tensor.data_type])
    m.say(f"{tensor.name} -> type {tensor.data_type}")
    return m.save()


@mutation("io_dtype")
def io_dtype(m: Mutant) -> Path:
    graph = m.model.graph
    value = m.rng.choice(list(graph.input) + list(graph.output) + list(graph.value_info))
    value.type.tensor_type.elem_type = m.rng.choice([t for t in _WRONG_TYPES if t != value.type.tensor_type.elem_type])
    m.say(f"{value.name} -> type {value.type.tensor_type.elem_type}")
    return m.save()


def _float_tensors(m: Mutant) -> list[TensorProto]:
    """Float initializers and Constant nodes' tensors, 1-D (bias-like) ones first in line half the time."""
    tensors = [t for t in m.model.graph.initializer if t.data_type == TensorProto.FLOAT]
    for node in m.model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value" and a.t.data_type == TensorProto.FLOAT]
    vectors = [t for t in tensors if len(t.dims) == 1]
    return vectors if vectors and m.rng.random() < 0.5 else tensors


def _poison(m: Mutant, value: float) -> Path:
    tensor = m.rng.choice(_float_tensors(m))
    array = numpy_helper.to_array(tensor).copy()
    flat = array.reshape(-1)
    count = flat.size if m.rng.random() < 0.3 else m.rng.randint(1, max(1, min(3, flat.size)))
    for index in m.rng.sample(range(flat.size), count):
        flat[index] = value
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    m.say(f"{count} of {flat.size} in {tensor.name or 'a Constant'} = {value}")
    return m.save()


@mutation("nan_weights")
def nan_weights(m: Mutant) -> Path:
    return _poison(m, np.nan)


@mutation("inf_weights")
def inf_weights(m: Mutant) -> Path:
    return _poison(m, np.inf)


@mutation("neg_inf_weights")
def neg_inf_weights(m: Mutant) -> Path:
    return _poison(m, -np.inf)


@mutation("perturb_constant")
def perturb_constant(m: Mutant) -> Path:
    """A scalar or tiny constant (an epsilon, a scale, a mask fill value) gets another value."""
    small = [t for t in _float_tensors(m) if int(np.prod(t.dims)) <= 4] or _float_tensors(m)
    tensor = m.rng.choice(small)
    factor = m.rng.choice([0.0, -1.0, 2.0, 0.5, 1e-3, 1e3, 1e30])
    array = numpy_helper.to_array(tensor) * np.float32(factor)
    tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float32), tensor.name))
    m.say(f"{tensor.name or 'a Constant'} x {factor}")
    return m.save()


def _save_external(m: Mutant) -> tuple[Path, Path]:
    path = m.save(external=True)
    return path, path.with_name(path.name + ".data")


@mutation("missing_external_data", kind="external")
def missing_external_data(m: Mutant) -> Path:
    path, data = _save_external(m)
    data.unlink()
    return path


@mutation("short_external_data", kind="external")
def short_external_data(m: Mutant) -> Path:
    path, data = _save_external(m)
    content = data.read_bytes()
    data.write_bytes(content[: m.rng.randrange(1, len(content))])
    return path


@mutation("empty_external_data", kind="external")
def empty_external_data(m: Mutant) -> Path:
    path, data = _save_external(m)
    data.write_bytes(b"")
    return path


def _relocate_external(m: Mutant, location_of: Callable[[Path], str]) -> Path:
    """Save with external data, move the .data file, and point every tensor's location at it."""
    path, data = _save_external(m)
    model = onnx.load(str(path), load_external_data=False)
    moved = m.folder.parent / "outside.data"
    os.replace(data, moved)
    location = location_of(moved)
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())
    m.say(f"location {location}")
    return path


@mutation("external_location_parent", kind="external")
def external_location_parent(m: Mutant) -> Path:
    return _relocate_external(m, lambda moved: "../" + moved.name)


@mutation("external_location_absolute", kind="external")
def external_location_absolute(m: Mutant) -> Path:
    return _relocate_external(m, lambda moved: str(moved.resolve()))


@mutation("external_location_dir", kind="external")
def external_location_dir(m: Mutant) -> Path:
    path, data = _save_external(m)
    model = onnx.load(str(path), load_external_data=False)
    (m.folder / "subdir").mkdir()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = m.rng.choice(["subdir", ".", ""])
    path.write_bytes(model.SerializeToString())
    return path


@mutation("external_offset", kind="external")
def external_offset(m: Mutant) -> Path:
    """One tensor's offset or length points past the end of the data file (or is negative)."""
    path, data = _save_external(m)
    model = onnx.load(str(path), load_external_data=False)
    tensors = [t for t in onnx.external_data_helper._get_all_tensors(model) if t.external_data]
    tensor = m.rng.choice(tensors)
    size = data.stat().st_size
    key = m.rng.choice(["offset", "length"])
    value = m.rng.choice([size + 1, size * 2, -8, 2**62, 0])
    entries = {entry.key: entry for entry in tensor.external_data}
    if key in entries:
        entries[key].value = str(value)
    else:
        tensor.external_data.add(key=key, value=str(value))
    m.say(f"{tensor.name}: {key}={value}")
    path.write_bytes(model.SerializeToString())
    return path


@mutation("external_data_symlink", kind="external")
def external_data_symlink(m: Mutant) -> Path:
    """The .data file beside the model is a symlink to a file elsewhere (as in a hub cache)."""
    path, data = _save_external(m)
    moved = m.folder.parent / "blob.data"
    os.replace(data, moved)
    data.symlink_to(moved)
    return path


@mutation("empty_graph")
def empty_graph(m: Mutant) -> Path:
    del m.model.graph.node[:]
    if m.rng.random() < 0.5:
        del m.model.graph.initializer[:]
    return m.save()


@mutation("no_outputs")
def no_outputs(m: Mutant) -> Path:
    del m.model.graph.output[:]
    return m.save()


@mutation("output_undefined")
def output_undefined(m: Mutant) -> Path:
    m.model.graph.output[m.rng.randrange(len(m.model.graph.output))].name = "fuzz_no_such_value"
    return m.save()


@mutation("duplicate_initializer")
def duplicate_initializer(m: Mutant) -> Path:
    """A second initializer with an existing name and other values (ORT keeps the first)."""
    graph = m.model.graph
    original = m.rng.choice([t for t in graph.initializer if t.data_type == TensorProto.FLOAT] or list(graph.initializer))
    twin = copy.deepcopy(original)
    array = numpy_helper.to_array(twin)
    twin.CopyFrom(numpy_helper.from_array((array * 2 + 1).astype(array.dtype), twin.name))
    position = m.rng.randrange(len(graph.initializer) + 1)
    graph.initializer.insert(position, twin)
    m.say(f"{original.name} twice")
    return m.save()


@mutation("duplicate_value_name")
def duplicate_value_name(m: Mutant) -> Path:
    """Two definitions of one name: two nodes' outputs, or a node output named like an input/initializer."""
    graph = m.model.graph
    node = graph.node[m.rng.choice(_nodes(m, lambda node: len(node.output) > 0))]
    others = [name for name in _value_names(graph) if name not in node.output]
    node.output[0] = m.rng.choice(others)
    m.say(f"{node.op_type} also defines {node.output[0]}")
    return m.save()


@mutation("duplicate_graph_input")
def duplicate_graph_input(m: Mutant) -> Path:
    graph = m.model.graph
    graph.input.append(copy.deepcopy(m.rng.choice(list(graph.input))))
    return m.save()


_WRONG_ATTRIBUTES = (
    helper.make_attribute("fuzz", 1.5), helper.make_attribute("fuzz", 3), helper.make_attribute("fuzz", "text"),
    helper.make_attribute("fuzz", [1, 2]), helper.make_attribute("fuzz", [1.0, 2.0]),
    helper.make_attribute("fuzz", numpy_helper.from_array(np.zeros(2, np.float32))),
)


@mutation("attribute_type")
def attribute_type(m: Mutant) -> Path:
    """An attribute's value of another type than the op defines, or a type tag that contradicts its field."""
    nodes = _nodes(m, lambda node: any(a.type != onnx.AttributeProto.GRAPH for a in node.attribute))
    node = m.model.graph.node[m.rng.choice(nodes)]
    attribute = m.rng.choice([a for a in node.attribute if a.type != onnx.AttributeProto.GRAPH])
    if m.rng.random() < 0.5:
        replacement = copy.deepcopy(m.rng.choice([a for a in _WRONG_ATTRIBUTES if a.type != attribute.type]))
        replacement.name = attribute.name
        attribute.CopyFrom(replacement)
        m.say(f"{node.op_type}.{attribute.name} is now {onnx.AttributeProto.AttributeType.Name(attribute.type)}")
    else:
        attribute.type = m.rng.choice([t for t in range(0, 15) if t != attribute.type])
        m.say(f"{node.op_type}.{attribute.name} tagged {attribute.type}")
    return m.save()


@mutation("attribute_value")
def attribute_value(m: Mutant) -> Path:
    """An int attribute (axis, perm, to, ...) or a float one (epsilon, alpha) gets another value."""
    nodes = _nodes(m, lambda node: any(a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS,
                                                  onnx.AttributeProto.FLOAT) for a in node.attribute))
    node = m.model.graph.node[m.rng.choice(nodes)]
    attribute = m.rng.choice([a for a in node.attribute if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS,
                                                                       onnx.AttributeProto.FLOAT)])
    if attribute.type == onnx.AttributeProto.INT:
        attribute.i = m.rng.choice([attribute.i + 1, attribute.i - 1, -attribute.i, 0, 99, -99])
    elif attribute.type == onnx.AttributeProto.FLOAT:
        attribute.f = m.rng.choice([0.0, -attribute.f, attribute.f * 100, float("nan"), 1.0])
    else:
        values = list(attribute.ints)
        m.rng.shuffle(values)
        attribute.ints[:] = values if m.rng.random() < 0.5 else values + [m.rng.randint(-3, 5)]
    m.say(f"{node.op_type}.{attribute.name} changed")
    return m.save()


@mutation("attribute_dropped")
def attribute_dropped(m: Mutant) -> Path:
    node = m.model.graph.node[m.rng.choice(_nodes(m, lambda node: len(node.attribute) > 0))]
    m.say(f"{node.op_type} lost {node.attribute[0].name}")
    del node.attribute[m.rng.randrange(len(node.attribute))]
    return m.save()


@mutation("opset_ai_onnx")
def opset_ai_onnx(m: Mutant) -> Path:
    """The default domain spelled "ai.onnx" (the spec's alias) in the imports, and maybe on the nodes."""
    for opset in m.model.opset_import:
        if opset.domain == "":
            opset.domain = "ai.onnx"
    if m.rng.random() < 0.5:
        for node in m.model.graph.node:
            if node.domain == "":
                node.domain = "ai.onnx"
        m.say("nodes too")
    return m.save()


@mutation("opset_version")
def opset_version(m: Mutant) -> Path:
    version = m.rng.choice([0, 1, 7, 11, 13, 16, 99, -1])
    if m.rng.random() < 0.2:
        del m.model.opset_import[:]
        m.say("no opset import")
    else:
        for opset in m.model.opset_import:
            if opset.domain == "":
                opset.version = version
        m.say(f"opset {version}")
    return m.save()


@mutation("ir_version")
def ir_version(m: Mutant) -> Path:
    m.model.ir_version = m.rng.choice([0, 1, 2, 3, 99, -1])
    return m.save()


def _dims_of(m: Mutant) -> list[onnx.TensorShapeProto.Dimension]:
    graph = m.model.graph
    values = list(graph.input) + list(graph.output) + list(graph.value_info)
    return [dim for value in values for dim in value.type.tensor_type.shape.dim]


@mutation("dims_negative")
def dims_negative(m: Mutant) -> Path:
    """-1 (or 0) as a declared dim of an input, output or intermediate value, or of an initializer."""
    if m.rng.random() < 0.7:
        dims = _dims_of(m)
        for dim in m.rng.sample(dims, min(len(dims), m.rng.randint(1, 3))):
            dim.dim_value = m.rng.choice([-1, -1, 0, -7])
    else:
        tensor = m.rng.choice([t for t in m.model.graph.initializer if len(t.dims)])
        tensor.dims[m.rng.randrange(len(tensor.dims))] = -1
        m.say(f"{tensor.name} dims {list(tensor.dims)}")
    return m.save()


@mutation("initializer_dims")
def initializer_dims(m: Mutant) -> Path:
    """An initializer's dims no longer match its data (or are transposed)."""
    tensor = m.rng.choice([t for t in m.model.graph.initializer if len(t.dims)] or list(m.model.graph.initializer))
    dims = list(tensor.dims)
    choice = m.rng.random()
    if choice < 0.4 and len(dims) > 1:
        dims = dims[::-1]
    elif choice < 0.7 and dims:
        dims[m.rng.randrange(len(dims))] += 1
    else:
        dims = dims + [1, 2]
    tensor.dims[:] = dims
    m.say(f"{tensor.name} dims {dims}")
    return m.save()


@mutation("value_info_wrong")
def value_info_wrong(m: Mutant) -> Path:
    """An intermediate value's declared shape or type disagrees with what computes it."""
    graph = m.model.graph
    names = [out for node in graph.node for out in node.output if out and out not in {o.name for o in graph.output}]
    name = m.rng.choice(names)
    shape = [m.rng.choice([1, 2, 3, 5, 64, "batch", "fuzz"]) for _ in range(m.rng.randint(0, 4))]
    elem = m.rng.choice([TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT16])
    for value in list(graph.value_info):
        if value.name == name:
            graph.value_info.remove(value)
    graph.value_info.append(helper.make_tensor_value_info(name, elem, shape))
    m.say(f"{name}: {onnx.TensorProto.DataType.Name(elem)} {shape}")
    return m.save()


@mutation("strip_shapes")
def strip_shapes(m: Mutant) -> Path:
    """No intermediate shapes and no output shapes, in half the cases no input shapes either (the same
    function: shape inference must cope, and feeds take the shapes the graph implies)."""
    graph = m.model.graph
    del graph.value_info[:]
    for value in graph.output:
        value.type.tensor_type.ClearField("shape")
    if m.rng.random() < 0.5:
        for value in graph.input:
            value.type.tensor_type.ClearField("shape")
        m.say("inputs too")
    return m.save()


_COMPARISON_SWAPS = {"LessOrEqual": "Less", "Less": "LessOrEqual", "GreaterOrEqual": "Greater",
                     "Greater": "GreaterOrEqual", "Equal": "Greater"}


@mutation("swap_comparison")
def swap_comparison(m: Mutant) -> Path:
    """LessOrEqual <-> Less and the like: a mask now keeps one position more or less."""
    nodes = _nodes(m, lambda node: node.op_type in _COMPARISON_SWAPS)
    if not nodes:
        m.say("no comparison; changed an op instead")
        return change_op(m)
    node = m.model.graph.node[m.rng.choice(nodes)]
    m.say(f"{node.op_type} -> {_COMPARISON_SWAPS[node.op_type]}")
    node.op_type = _COMPARISON_SWAPS[node.op_type]
    return m.save()


_OP_SWAPS = {"Add": "Sub", "Sub": "Add", "Mul": "Div", "Div": "Mul", "Softmax": "LogSoftmax", "Erf": "Tanh",
             "Tanh": "Erf", "Gelu": "Relu", "ReduceMean": "ReduceSum", "Sqrt": "Abs", "Pow": "Max", "Where": "Where",
             "MatMul": "Add", "LayerNormalization": "LayerNormalization", "Max": "Min", "Gemm": "Gemm"}


@mutation("change_op")
def change_op(m: Mutant) -> Path:
    """An op replaced by a sibling with the same signature (or by an unknown op)."""
    node = m.model.graph.node[m.rng.choice(_nodes(m, lambda node: node.op_type in _OP_SWAPS))]
    before = node.op_type
    if before == "Where":
        node.input[1], node.input[2] = node.input[2], node.input[1]
    elif before == "LayerNormalization":
        node.input[1], node.input[2] = node.input[2], node.input[1]
    elif before == "Gemm":
        node.attribute.append(helper.make_attribute("alpha", 0.5))
    else:
        node.op_type = _OP_SWAPS[before]
    m.say(f"{before} -> {node.op_type}")
    return m.save()


@mutation("swap_operands")
def swap_operands(m: Mutant) -> Path:
    node = m.model.graph.node[m.rng.choice(_nodes(m, lambda node: node.op_type in ("Sub", "Div", "MatMul", "Pow")
                                                  and len(node.input) == 2) or _nodes(m, lambda node: len(node.input) >= 2))]
    node.input[0], node.input[1] = node.input[1], node.input[0]
    m.say(f"{node.op_type} operands swapped")
    return m.save()


@mutation("unknown_op")
def unknown_op(m: Mutant) -> Path:
    node = m.model.graph.node[m.rng.randrange(len(m.model.graph.node))]
    if m.rng.random() < 0.5:
        node.op_type = "FuzzNoSuchOp"
    else:
        node.domain = "com.fuzz"
        m.model.opset_import.append(helper.make_opsetid("com.fuzz", 1))
    m.say(f"{node.op_type} in {node.domain or 'ai.onnx'}")
    return m.save()


@mutation("remove_initializer")
def remove_initializer(m: Mutant) -> Path:
    graph = m.model.graph
    index = m.rng.randrange(len(graph.initializer))
    m.say(f"no {graph.initializer[index].name}")
    del graph.initializer[index]
    return m.save()


@mutation("initializer_as_input")
def initializer_as_input(m: Mutant) -> Path:
    """An initializer also listed as a graph input (old exporters did this: an overridable default)."""
    graph = m.model.graph
    tensor = m.rng.choice(list(graph.initializer))
    graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return m.save()


@mutation("rename_output")
def rename_output(m: Mutant) -> Path:
    """A graph output that is a graph input, or an initializer, passed straight through."""
    graph = m.model.graph
    source = m.rng.choice(list(graph.input) + [None])
    if source is None:
        tensor = m.rng.choice(list(graph.initializer))
        graph.output.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    else:
        graph.output.append(copy.deepcopy(source))
    return m.save()


@mutation("stacked")
def stacked(m: Mutant) -> Path:
    """Two or three structural mutations on top of each other."""
    singles = [name for name in MUTATIONS if name not in BYTE_MUTATIONS | EXTERNAL_MUTATIONS | {"stacked", "unchanged"}
               and name not in PATH_MUTATIONS]
    for name in m.rng.sample(singles, m.rng.randint(2, 3)):
        m.say(name)
        with contextlib.suppress(Exception):  # a mutation the previous one left nothing to work on
            MUTATIONS[name](m)  # changes m.model in place; the last save below is what counts
    return m.save()


# Mutations of the input path itself.
PATH_MUTATIONS = {"symlink_loop", "input_missing", "input_directory", "input_dangling_symlink", "input_text"}


@mutation("symlink_loop")
def symlink_loop(m: Mutant) -> Path:
    path = m.folder / MODEL_FILE
    other = m.folder / "loop.onnx"
    if m.rng.random() < 0.5:
        path.symlink_to(path.name)  # a link to itself
    else:
        path.symlink_to(other.name)
        other.symlink_to(path.name)
    return path


@mutation("input_dangling_symlink")
def input_dangling_symlink(m: Mutant) -> Path:
    path = m.folder / MODEL_FILE
    path.symlink_to("gone.onnx")
    return path


@mutation("input_missing")
def input_missing(m: Mutant) -> Path:
    return m.folder / MODEL_FILE


@mutation("input_directory")
def input_directory(m: Mutant) -> Path:
    path = m.folder / MODEL_FILE
    path.mkdir()
    return path


@mutation("input_text")
def input_text(m: Mutant) -> Path:
    path = m.folder / MODEL_FILE
    path.write_text(m.rng.choice(["", "not a model\n", onnx.printer.to_text(m.model.graph)[:500], "\x00" * 64]))
    return path


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    index: int
    seed: Seed
    mutation: str
    external: bool

    @property
    def label(self) -> str:
        return f"{self.index:05d}-{self.seed.name}-{self.mutation}" + ("-ext" if self.external else "")


def plan_case(index: int, seeds: list[Seed], *, model_share: float | None = None) -> Case:
    """Case ``index``: mutations in turn (every one in any ``len(MUTATIONS)`` consecutive cases), a random seed.

    Seeds are drawn by weight; ``model_share`` instead sets the fraction of cases on the
    exported models (the costly ones to fuse and validate), for a time-bounded set.
    """
    rng = random.Random(f"{MASTER_SEED}:{index}")
    name = list(MUTATIONS)[index % len(MUTATIONS)]
    exported = [s for s in seeds if s.exported]
    if model_share is not None and exported and len(exported) < len(seeds):
        pool = exported if rng.random() < model_share else [s for s in seeds if not s.exported]
        seed = rng.choice(pool)
    else:
        seed = rng.choices(seeds, weights=[s.weight for s in seeds])[0]
    external = name in EXTERNAL_MUTATIONS or (name not in PATH_MUTATIONS and rng.random() < 0.3)
    return Case(index, seed, name, external)


def write_case(case: Case, folder: Path) -> tuple[Path, str]:
    """Write the mutated input into ``folder``; returns its path and a note on what was changed."""
    folder.mkdir(parents=True, exist_ok=True)
    mutant = Mutant(onnx.load_from_string(case.seed.model), random.Random(f"{MASTER_SEED}:{case.index}:mutate"),
                    folder, case.external)
    return MUTATIONS[case.mutation](mutant), mutant.note


# ----------------------------------------------------------------------------- judging


@dataclass
class Outcome:
    case: Case
    category: str
    detail: str = ""
    note: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.category not in FINE

    def describe(self) -> str:
        return f"{self.case.label} [{self.note}]: {self.category}: {self.detail}"


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: file bytes' hash, link target, or "dir"."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            if path.is_symlink():
                found[key] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@dataclass(frozen=True)
class FeedShape:
    batch: int
    sequence: int
    past: int


FEED_SHAPES = (FeedShape(2, 4, 3), FeedShape(1, 3, 0))
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def _dim(dim, shape: FeedShape) -> int:
    if isinstance(dim, int) and dim >= 0:
        return dim
    name = str(dim or "").lower()
    if "batch" in name:
        return shape.batch
    if "past" in name:
        return shape.past
    if "total" in name:
        return shape.past + shape.sequence
    return shape.sequence


def make_feeds(session, seed: int, shapes: dict[str, list] | None = None) -> list[dict[str, np.ndarray]]:
    """Feeds for the inputs a session declares: ids in range, right-padded masks, normal floats.

    ``shapes``: dims for inputs the session's model declares no shape for (ORT then says ``[]``).
    """
    rng = np.random.default_rng(seed)
    feeds = []
    for shape in FEED_SHAPES:
        feed = {}
        for spec in session.get_inputs():
            dtype = _NUMPY_TYPES.get(spec.type)
            if dtype is None:
                raise ValueError(f"no feed for {spec.type}")
            dims = tuple(_dim(dim, shape) for dim in ((shapes or {}).get(spec.name) or spec.shape or []))
            name = spec.name.lower()
            if "mask" in name and len(dims) == 2:
                lengths = np.maximum(dims[1] - np.arange(dims[0]), 1)
                value = np.arange(dims[1])[None, :] < lengths[:, None]
            elif "position" in name:
                value = np.broadcast_to(np.arange(shape.past, shape.past + dims[-1]) if dims else 0, dims)
            elif "token_type" in name:
                value = rng.integers(0, 2, size=dims)
            elif np.dtype(dtype).kind in "iu":
                value = rng.integers(0, 16, size=dims)
            elif np.dtype(dtype).kind == "b":
                value = np.ones(dims, dtype=bool)
            else:
                value = rng.standard_normal(dims)
            feed[spec.name] = np.ascontiguousarray(value).astype(dtype)
        feeds.append(feed)
    return feeds


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a fuzzed model makes ORT log; the harness judges, ORT need not talk
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def shapeless_inputs(path: Path) -> set[str]:
    """Inputs the model declares no shape for (not even a rank)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {value.name for value in graph.input if not value.type.tensor_type.HasField("shape")}


def reference_outputs(path: Path, seed: int, shapes: dict[str, list] | None = None):
    """(feeds, outputs by name per feed) of ORT on the input, or None when ORT cannot load or run it.

    ``shapes``: dims for the inputs the input declares no shape for (the optimized model's).
    """
    try:
        session = ort_session(path)
        feeds = make_feeds(session, seed, shapes)
        names = [output.name for output in session.get_outputs()]
        return feeds, [dict(zip(names, session.run(names, feed))) for feed in feeds]
    except Exception:
        return None


def compare(expected: np.ndarray, actual: np.ndarray) -> str | None:
    """Why ``actual`` is not ``expected`` (NaN where NaN, inf where inf, finite values within tolerance), or None."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape:
        return f"shape {actual.shape}, expected {expected.shape}"
    if expected.dtype.kind not in "fc" or actual.dtype.kind not in "fc":
        return None if np.array_equal(expected, actual) else f"{np.sum(expected != actual)} values differ"
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    nan_mismatch = np.isnan(expected) != np.isnan(actual)
    if nan_mismatch.any():
        return f"NaN at {int(nan_mismatch.sum())} of {expected.size} positions where the input has {int(np.isnan(expected).sum())}"
    inf_mismatch = (np.isinf(expected) | np.isinf(actual)) & (expected != actual) & ~np.isnan(expected)
    if inf_mismatch.any():
        return f"inf differs at {int(inf_mismatch.sum())} of {expected.size} positions"
    finite = np.isfinite(expected)
    if not finite.any():
        return None
    scale = float(np.abs(expected[finite]).max())
    worst = float(np.abs(expected[finite] - actual[finite]).max())
    if worst > PARITY_REL_TOLERANCE * scale + 1e-6:
        return f"max |diff| {worst:.3g} at scale {scale:.3g}"
    return None


class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Turn a hang into an exception (main thread, Unix only; elsewhere no limit)."""
    if not hasattr(signal, "SIGALRM") or seconds <= 0:
        yield
        return

    def expire(signum, frame):
        raise CaseTimeout(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def invoke_optimize(input_path: Path, output_path: Path, model_type: str):
    from click.testing import CliRunner

    from tfopt.cli import main

    args = ["optimize", "--input", str(input_path), "--output", str(output_path), "--model_type", model_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(main, args, catch_exceptions=True)


def run_case(case: Case, work_dir: Path, *, timeout: int = CASE_TIMEOUT_S) -> Outcome:
    """Write the case under ``work_dir``, run `tfopt optimize` on it in-process, judge what happened."""
    started = time.perf_counter()
    case_dir = Path(work_dir) / case.label
    input_path, note = write_case(case, case_dir / "in")
    out_dir = case_dir / "out"
    out_dir.mkdir(parents=True)
    output_path = out_dir / OUTPUT_FILE
    before = snapshot(case_dir / "in") | {"..outside": repr(snapshot_outside(case_dir))}
    with time_limit(timeout):
        try:
            result = invoke_optimize(input_path, output_path, case.seed.model_type)
        except CaseTimeout as exc:  # raised outside CliRunner's own handler
            return Outcome(case, HANG, str(exc), note, time.perf_counter() - started)
    after = snapshot(case_dir / "in") | {"..outside": repr(snapshot_outside(case_dir))}
    category, detail = judge(result, input_path, output_path, before, after, case.index, folder=case_dir)
    return Outcome(case, category, detail, note, time.perf_counter() - started)


def snapshot_outside(case_dir: Path) -> dict[str, str]:
    """Files beside the input folder (external data moved out of it): they must not change either."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in case_dir.iterdir() if p.is_file()}


def error_length(line: str, folder: Path | None) -> int:
    """The error line's length as a user with a short path sees it: the case folder's own path is not counted."""
    return len(line.replace(f"{folder}{os.sep}", "")) if folder is not None else len(line)


def judge(result, input_path: Path, output_path: Path, before: dict, after: dict, feed_seed: int,
          folder: Path | None = None) -> tuple[str, str]:
    stderr = result.stderr
    text = result.output  # stdout and stderr, interleaved
    exception = result.exception
    if isinstance(exception, CaseTimeout):
        return HANG, str(exception)
    if exception is not None and not isinstance(exception, SystemExit):
        where = ""
        if result.exc_info is not None:
            import traceback

            frames = traceback.extract_tb(result.exc_info[2])
            if frames:
                where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})"
        return TRACEBACK, f"{type(exception).__name__}: {str(exception).strip()[:200]}{where}"
    if "Traceback" in text:
        return TRACEBACK, text.strip().splitlines()[-1][:200]
    if result.exit_code not in (0, 2):
        return BAD_EXIT, f"exit {result.exit_code}: {text.strip()[-200:]}"
    if before != after:
        changed = sorted(set(before.items()) ^ set(after.items()))
        return INPUT_CHANGED, ", ".join(sorted({name for name, _ in changed}))
    left = sorted(p.name for p in output_path.parent.iterdir())
    if result.exit_code == 2:
        errors = [line for line in stderr.splitlines() if line.startswith("tfopt: error:")]
        lines = [line for line in stderr.splitlines() if line.strip()]
        if len(errors) != 1 or lines[-1] != errors[0]:
            return NOT_ONE_LINE, " | ".join(lines)[-300:]
        if result.stdout.strip():  # a library's print (ONNX Runtime's "EP Error" banner) is a line too
            return NOT_ONE_LINE, "stdout: " + " | ".join(result.stdout.strip().splitlines())[-300:]
        if error_length(errors[0], folder) > ERROR_LINE_LIMIT:
            return LONG_LINE, f"{error_length(errors[0], folder)} characters: {errors[0]}"
        if any(marker in errors[0] for marker in RAW_MARKERS):
            return RAW_TEXT, errors[0]
        if left:
            return LEFT_FILES, ", ".join(left)
        if reference_outputs(input_path, feed_seed) is not None:
            return REFUSED_RUNNABLE, errors[0]
        return REFUSED, errors[0]
    if left not in ([OUTPUT_FILE], sorted([OUTPUT_FILE, OUTPUT_FILE + ".data"])):
        return NO_OUTPUT, ", ".join(left) or "nothing written"
    if "parity not checked" in stderr:  # an input ORT cannot run on generated inputs must be an error
        return UNCHECKED_WRITTEN, next(line for line in stderr.splitlines() if "parity not checked" in line)[:300]
    try:
        session = ort_session(output_path)
    except Exception as exc:
        return OUTPUT_UNLOADABLE, " ".join(str(exc).split())[:200]
    shapeless = shapeless_inputs(input_path)
    shapes = {spec.name: spec.shape for spec in session.get_inputs() if spec.name in shapeless}
    reference = reference_outputs(input_path, feed_seed, shapes)
    if reference is None:
        return OK_UNCHECKED, ""
    feeds, expected_runs = reference
    for feed, expected in zip(feeds, expected_runs):
        try:
            names = [output.name for output in session.get_outputs()]
            prepared = {spec.name: feed[spec.name].astype(_NUMPY_TYPES.get(spec.type, feed[spec.name].dtype))
                        for spec in session.get_inputs()}
            actual = dict(zip(names, session.run(names, prepared)))
        except Exception as exc:
            return OUTPUT_FAILS, " ".join(str(exc).split())[:200]
        if sorted(actual) != sorted(expected):
            return OUTPUT_DIFFERS, f"outputs {sorted(actual)}, input has {sorted(expected)}"
        for name, value in expected.items():
            reason = compare(value, actual[name])
            if reason:
                shape = {k: v.shape for k, v in feed.items()}
                return OUTPUT_DIFFERS, f"{name}: {reason} (feed {shape})"
    return OK_PARITY, ""


# ----------------------------------------------------------------------------- command line


def summary_table(outcomes: list[Outcome]) -> str:
    """Outcome counts, then failing mutations x categories."""
    counts = Counter(outcome.category for outcome in outcomes)
    lines = [f"{'outcome':<52} {'cases':>6}", "-" * 59]
    for category in CATEGORIES:
        if counts.get(category):
            marker = "  " if category in FINE else "! "
            lines.append(f"{marker}{category:<50} {counts[category]:>6}")
    lines.append(f"{'  total':<52} {len(outcomes):>6}")
    failing = [o for o in outcomes if o.failed]
    if failing:
        lines += ["", f"{'failing mutation':<28} {'outcome':<46} {'cases':>5}"]
        by_pair = Counter((o.case.mutation, o.category) for o in failing)
        for (name, category), count in sorted(by_pair.items()):
            lines.append(f"{name:<28} {category:<46} {count:>5}")
    lines += ["", f"{'seed':<28} {'cases':>5} {'mean s':>7} {'max s':>6}"]
    for seed in sorted({o.case.seed.name for o in outcomes}):
        times = [o.seconds for o in outcomes if o.case.seed.name == seed]
        lines.append(f"{seed:<28} {len(times):>5} {np.mean(times):>7.2f} {max(times):>6.2f}")
    per_mutation = Counter(o.case.mutation for o in outcomes)
    refused = Counter(o.case.mutation for o in outcomes if o.category in (REFUSED, REFUSED_RUNNABLE))
    passed = Counter(o.case.mutation for o in outcomes if o.category in (OK_PARITY, OK_UNCHECKED))
    lines += ["", f"{'mutation':<28} {'cases':>5} {'exit 0':>6} {'exit 2':>6} {'bad':>5}"]
    for name in MUTATIONS:
        if per_mutation.get(name):
            bad = per_mutation[name] - refused[name] - passed[name]
            lines.append(f"{name:<28} {per_mutation[name]:>5} {passed[name]:>6} {refused[name]:>6} {bad:>5}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--show", type=int, default=40, help="failing cases to list")
    parser.add_argument("--only", default="", help="comma-separated mutation names to keep")
    parser.add_argument("--model-share", type=float, default=None,
                        help="fraction of cases on the exported BERT/GPT-2 (default: by seed weight, 1/4)")
    parser.add_argument("--keep", default="", help="write the cases here and keep them")
    parser.add_argument("--list", default="", help="also list the cases of these outcomes (comma-separated, substrings)")
    args = parser.parse_args(argv)
    only = {name for name in args.only.split(",") if name}
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tfopt-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seeds = build_seeds(work / "seeds")
    print(f"seeds: {', '.join(s.name for s in seeds)} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    outcomes = []
    try:
        for index in range(args.start, args.start + args.cases):
            case = plan_case(index, seeds, model_share=args.model_share)
            if only and case.mutation not in only:
                continue
            outcome = run_case(case, work / "cases")
            outcomes.append(outcome)
            if not args.keep:
                shutil.rmtree(work / "cases" / case.label, ignore_errors=True)
            if len(outcomes) % 100 == 0:
                print(f"{len(outcomes)} cases, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(summary_table(outcomes))
    failing = [o for o in outcomes if o.failed]
    for outcome in failing[: args.show]:
        print("  " + outcome.describe())
    wanted = [part for part in args.list.split(",") if part]
    for outcome in outcomes:
        if not outcome.failed and any(part in outcome.category for part in wanted):
            print("  " + outcome.describe())
    print(f"\n{len(outcomes)} cases in {time.perf_counter() - started:.1f} s; {len(failing)} failing")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
