"""``tfopt new-plugin NAME``: a new adapter distribution that installs and passes its tests as written.

The template's model is a tiny PyTorch block built in code from a fixed seed (LayerNorm(x +
fc2(gelu(fc1(x))))), so every stage works before the author has written a line: export on both
torch exporters with dynamic batch and sequence, the shared fusions (BiasGelu,
SkipLayerNormalization) checked against stated counts, verify and benchmark against torch,
and the conformance kit. The author then swaps in the real model, keeping the shape.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from .errors import TfoptError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "tfopt adapter: {name}"
requires-python = ">=3.10"
dependencies = ["tfopt", "torch>=2.5", "onnxscript>=0.5"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points.tfopt]
{name} = "{package}"

[tool.setuptools.packages.find]
include = ["{package}*"]
'''

README = '''# {dist}

A tfopt adapter for the `{name}` model family, made by `tfopt new-plugin {name}`.

    pip install -e .            # registers the entry point `{name}` in the group `tfopt`
    tfopt plugins               # lists it
    tfopt run --plugin {name} --output out/
    python -m pytest tests      # the conformance kit on both exporters

Start from `{package}/__init__.py`: replace `build_model` with your model, `INPUT_NAMES` and
`example_inputs` with its inputs, and `expected_counts` with what its fused graph holds.
The guide is docs/plugins.md of tfopt.
'''

PLUGIN = '''"""tfopt adapter for {name}.

The model is a tiny stand-in built in code from a fixed seed (so `tfopt verify DIR` rebuilds
the same weights): replace ``build_model``, ``INPUT_NAMES``/``example_inputs`` and
``expected_counts`` with your family's. torch is imported inside the hooks.
"""

from pathlib import Path

import numpy as np

import tfopt
from tfopt.bench import latency_row, ort_session, time_interleaved
from tfopt.feeds import int_tuple, session_feed
from tfopt.graph import read_io_spec
from tfopt.results import BenchResult, ExportResult, ModelInfo, RunContext, VerifyResult
from tfopt.run_cache import PerRun
from tfopt.torch_kit import chosen_exporter, perturb_vector_params, quiet_export
from tfopt.verify import compare_cases

HIDDEN = 16
SEED = 0
INPUT_NAMES = ["features"]  # (batch, sequence, hidden) floats
OUTPUT_NAME = "hidden_states"
_MODELS: PerRun = PerRun()


def build_model():
    """LayerNorm(x + fc2(gelu(fc1(x)))): one residual MLP block. Replace with your model."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(HIDDEN, 4 * HIDDEN), torch.nn.Linear(4 * HIDDEN, HIDDEN)
            self.norm = torch.nn.LayerNorm(HIDDEN)

        def forward(self, features):
            return self.norm(features + self.fc2(torch.nn.functional.gelu(self.fc1(features))))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Block()
    perturb_vector_params(model, seed=SEED)  # distinct biases, as trained weights have
    return model.eval()


def expected_counts() -> dict:
    """What the fused graph holds (the run warns about anything short of it)."""
    return {{"BiasGelu|FastGelu|Gelu|QuickGelu": 1, "SkipLayerNormalization": 1}}


def example_inputs(batch: int, sequence: int, seed: int = SEED) -> dict:
    rng = np.random.default_rng(seed)
    return {{"features": rng.standard_normal((batch, sequence, HIDDEN)).astype(np.float32)}}


def load(ctx: RunContext):
    if ctx.source not in (None, "tiny"):
        raise tfopt.TfoptError(f"{{ctx.source}}: unknown {name} model (this template knows 'tiny')")
    return _MODELS.get(ctx, ctx.source, build_model)


@tfopt.hookimpl
def export(ctx: RunContext) -> ExportResult:
    import torch

    model, exporter = load(ctx), chosen_exporter(ctx)
    path = Path(ctx.work_dir) / "exported.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".exported.onnx.tmp")
    example = tuple(torch.from_numpy(value) for value in example_inputs(2, 8).values())  # > 1: not specialized
    names = dict(input_names=INPUT_NAMES, output_names=[OUTPUT_NAME])
    ctx.progress(f"exporting {name} with the {{exporter}} exporter ...")
    with quiet_export():
        if exporter == "dynamo":
            dims = {{0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}}
            shapes = {{input_name: dims for input_name in INPUT_NAMES}}
            torch.onnx.export(model, example, str(tmp), dynamo=True, dynamic_shapes=shapes, external_data=False, **names)
        else:
            axes = {{axis_name: {{0: "batch", 1: "sequence"}} for axis_name in [*INPUT_NAMES, OUTPUT_NAME]}}
            torch.onnx.export(model, example, str(tmp), dynamo=False, opset_version=17, dynamic_axes=axes, **names)
    tmp.replace(path)  # atomic: a failed export leaves no exported.onnx
    info = ModelInfo("{name}", expected=expected_counts())
    return ExportResult(model_path=path, io=read_io_spec(path), info=info, exporter=exporter)


def _torch_outputs(model, feed: dict) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(*(torch.from_numpy(feed[input_name]) for input_name in INPUT_NAMES)).numpy()


@tfopt.hookimpl
def verify(ctx: RunContext, exported: ExportResult, model_path: Path, inputs: list) -> VerifyResult:
    model, session = load(ctx), ort_session(model_path)
    references = [_torch_outputs(model, feed) for feed in inputs]
    actuals = [session.run(None, session_feed(session, feed))[0] for feed in inputs]
    labels = [{{"batch_size": feed["features"].shape[0], "sequence_length": feed["features"].shape[1]}} for feed in inputs]
    return compare_cases(
        references, actuals, labels=labels, precision=ctx.option("precision", "fp32"),
        reference_name="torch", tolerance=ctx.option("tolerance"),
    )


@tfopt.hookimpl
def benchmark(ctx: RunContext, exported: ExportResult, models: dict) -> BenchResult:
    import torch

    model = load(ctx)
    sessions = {{label: ort_session(path) for label, path in models.items()}}
    rows = []
    for batch in int_tuple(ctx.option("bench_batch_sizes", (1,)), "bench_batch_sizes"):
        for sequence in int_tuple(ctx.option("bench_sequence_lengths", (8, 32)), "bench_sequence_lengths"):
            ctx.progress(f"benchmarking batch {{batch}}, sequence {{sequence}} ...")
            feed = example_inputs(batch, sequence)
            tensors = [torch.from_numpy(feed[input_name]) for input_name in INPUT_NAMES]
            calls = {{"torch": lambda: model(*tensors)}}
            for label, session in sessions.items():
                calls[label] = lambda session=session, prepared=session_feed(session, feed): session.run(None, prepared)
            with torch.inference_mode():  # engines alternate in blocks: a slow spell hits all of them
                timed = time_interleaved(
                    calls, warmup=int(ctx.option("bench_warmup", 3)), repeat=int(ctx.option("bench_repeat", 20))
                )
            rows += [latency_row(engine, batch, sequence, seconds) for engine, seconds in timed.items()]
    return BenchResult(rows=rows)
'''

TESTS = '''"""{name} through tfopt's conformance kit, on both torch exporters."""

import pytest

import {package}
from tfopt.testing import check_adapter, isolated_plugin_manager


@pytest.fixture
def pm(tmp_path):
    """Every installed plugin; {name} registered by hand when it is not pip-installed yet."""
    return isolated_plugin_manager(tmp_path, plugins={{"{name}": {package}}})


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_conforms(pm, tmp_path, exporter):
    outcome = check_adapter("{name}", source="tiny", options={{"exporter": exporter}}, work_dir=tmp_path, pm=pm)
    report = outcome.report
    assert report["fuse"]["missing"] == []
    assert report["verify"]["reference"] == "torch" and report["verify"]["passed"]
    assert {{row["engine"] for row in report["benchmark"]["rows"]}} == {{"torch", "ort:raw", "ort:tfopt"}}
'''


def new_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write the distribution ``tfopt-NAME`` under ``directory``; return its folder.

    Nothing is written when the folder exists already (one-line error), and a failure
    half-way leaves nothing behind (the files are made in a temp folder, then renamed).
    """
    if not NAME_PATTERN.match(name):
        raise TfoptError(f"plugin name {name!r}: use lowercase letters, digits and _ (a Python identifier), e.g. my_family")
    parent = Path(directory)
    if parent.exists() and not parent.is_dir():
        raise TfoptError(f"{parent}: not a directory")
    dist = "tfopt-" + name.replace("_", "-")
    target = parent / dist
    if target.exists():
        raise TfoptError(f"{target}: exists already; choose another --dir or remove it")
    package = f"tfopt_{name}"
    values = {"name": name, "dist": dist, "package": package}
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dist}.", dir=parent))
    try:
        (staging / package).mkdir()
        (staging / "tests").mkdir()
        (staging / "pyproject.toml").write_text(PYPROJECT.format(**values), encoding="utf-8")
        (staging / "README.md").write_text(README.format(**values), encoding="utf-8")
        (staging / package / "__init__.py").write_text(PLUGIN.format(**values), encoding="utf-8")
        (staging / "tests" / f"test_{name}.py").write_text(TESTS.format(**values), encoding="utf-8")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
