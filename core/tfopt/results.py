"""The context that flows through one run and the small typed result of each stage.

The report is the sum of these results (see ``report.py``): every field here is
what ``report.json`` documents, so keep them plain data (JSON-serialisable via
``dataclasses.asdict``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# The names a run's options choose from. They live here, in a module with no heavy imports,
# so that `tfopt run --help` and `tfopt verify --help` list them without loading onnx.
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
FUSION_NAMES = (  # user-facing fusion names: --disable, and the --disable_* flags of `tfopt optimize`
    "layer_norm",
    "gelu",
    "fast_gelu",
    "bias_gelu",
    "skip_layer_norm",
    "embed_layer_norm",
    "attention",
)
TARGETS = ("cpu", "cuda")  # what fusion writes for: ONNX Runtime's CPU or CUDA provider

# The files tfopt writes into a run directory under fixed names. They live here, where the
# pipeline, report.py, html_report.py and profile.py all take them without importing each other
# (and are still importable from the modules that write them: tfopt.report.REPORT_FILE, ...).
REPORT_FILE = "report.json"  # report.py
PAGE_FILE = "report.html"  # html_report.py
PROFILE_FILE = "profile.json"  # profile.py


@dataclass
class ModelInfo:
    """What the fusion rules need to know about the exported model."""

    model_type: str  # e.g. "bert", "vit", "gpt2": tfopt.graph.MODEL_TYPES have built-in expected counts
    num_heads: int = 0  # 0 = detect from the graph
    hidden_size: int = 0  # 0 = detect from the graph
    num_layers: int = 0  # 0 = unknown (counted from the graph's Softmax); scales the expected counts
    # Fused-op counts a fully fused model has ("A|B" = the sum of both); None = from model_type
    # (tfopt.graph.expected_counts). Helpers: tfopt.graph.encoder_counts / decoder_counts.
    expected: dict[str, int] | None = None
    # The family's own rules (tfopt.graph.FusionRules), run inside the shared plan. Not report
    # material (repr=False keeps them out of report.json); ``tfopt verify DIR`` does not fuse.
    rules: list[Any] = field(default_factory=list, repr=False, compare=False)
    # Default sizes of the graph's named dynamic axes, {"samples": [400, 800]}: what validation's
    # generated feeds, the default make_dummy_inputs and ``tfopt profile`` use where the generic
    # sequence lengths (validation: 7 and 4) do not fit the model (a conv front end). None = those.
    axis_sizes: dict[str, list[int]] | None = None
    # Why validation cannot compare this model's numbers (e.g. a CUDA-only op on a CPU machine):
    # the conformance kit (tfopt.testing.check_adapter) then accepts a model whose parity was not checked.
    parity_not_checked: str | None = None


@dataclass
class IOSpec:
    """Names, element types and dynamic axes of the exported graph's inputs/outputs.

    ``dynamic_axes`` names each input's dynamic axes as the graph does (``tfopt.graph.read_io_spec``):
    ``{"input_ids": {0: "batch", 1: "sequence"}}`` for text, ``{"pixel_values": {0: "batch"}}``
    for images of one size, ``{"input_values": {0: "batch", 1: "samples"}}`` for audio. Axis 0 is the
    batch; the others are the model's own (``tfopt.feeds`` sizes them by these names).
    """

    inputs: dict[str, str]  # name -> numpy dtype name ("int64", "float32", ...)
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)  # input/output -> axis -> name


@dataclass
class ExportResult:
    model_path: Path
    io: IOSpec
    info: ModelInfo
    exporter: str = ""  # "dynamo", "legacy", "tf2onnx", ...
    seconds: float = 0.0


@dataclass
class Validation:
    """What validating one written model against the model it came from found."""

    passed: bool
    problem: str | None = None  # one line; None when it passed
    precision: str = "fp32"
    max_diff: float = 0.0  # worst |difference| / max(1, |reference|) (fp32/fp16), or 1 - cosine (int8)
    feeds: int = 0  # generated feeds compared; 0 = parity not checked (see notes)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class DroppedRule:
    """A fusion rule left out because the model it produced failed validation."""

    rule: str
    problem: str


@dataclass
class FuseResult:
    model_path: Path
    op_counts: dict[str, int]  # op type -> count in the fused graph
    rule_counts: dict[str, int]  # fusion rule -> number of times it fired
    expected: dict[str, int]  # fused op type -> count the family expects
    missing: list[str]  # human-readable: each expected fusion that did not happen, each kind of primitive left
    leftover: dict[str, int] = field(default_factory=dict)  # primitives left unfused, by kind (tfopt.graph.leftovers)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    validation: Validation | None = None  # None = written unvalidated (--no-validate)
    dropped_rules: list[DroppedRule] = field(default_factory=list)
    # Other graphs of the same model this stage fused (an encoder beside its decoder), by role:
    # op_counts, expected, missing and leftover cover them too (the conformance kit counts them all).
    companions: dict[str, Path] = field(default_factory=dict)


@dataclass
class PrecisionResult:
    model_path: Path
    precision: str  # "fp32", "fp16", "bf16", "int8", "int4"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    validation: Validation | None = None  # of the converted model against the fused one; None = not checked
    # A model computing what model_path computes that runs on this machine's CPU (bf16's emulation,
    # tfopt.bfloat16), for verify and validation; None = model_path itself runs here.
    emulation_path: Path | None = None


@dataclass
class DiffStats:
    """Differences between the optimized model and the source, on valid (unpadded) positions."""

    max_abs: float
    p50_abs: float
    p90_abs: float
    p99_abs: float
    max_rel: float
    nan_count: int


@dataclass
class VerifyResult:
    passed: bool
    tolerance: float
    precision: str
    reference: str  # what the outputs were compared against ("torch", "onnxruntime:raw", ...)
    overall: DiffStats
    cases: list[dict[str, Any]] = field(default_factory=list)  # per case: shapes + DiffStats
    top1_agreement: float | None = None  # for LM logits
    seconds: float = 0.0
    histogram: dict[str, Any] | None = None  # abs differences per log10 bin (tfopt.verify.diff_histogram); None = not kept
    failure: str | None = None  # why it failed when the criterion is not max abs diff (int8 embeddings, accuracy)
    notes: list[str] = field(default_factory=list)  # one line each: further checks the adapter ran (generation, ...)


@dataclass
class LatencyRow:
    """One engine timed at one input shape.

    ``shape`` is the key: the input's dynamic axes by name (``{"batch": 1, "sequence": 32}``,
    ``{"batch": 4}`` for fixed-size images, ``{"batch": 1, "samples": 16000}``).
    ``batch_size``/``sequence_length`` repeat it for readers of older reports
    (``sequence_length`` 0 = the input has no sequence axis).
    """

    engine: str  # "torch", "ort:raw", "ort:tfopt", ...
    batch_size: int
    sequence_length: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float  # samples per second at p50
    shape: dict[str, int] = field(default_factory=dict)  # axis name -> size; absent from older reports


@dataclass
class BenchResult:
    rows: list[LatencyRow]
    device: str = "cpu"
    seconds: float = 0.0


@dataclass
class RunContext:
    """Everything a stage needs; one instance flows through a whole run.

    ``options`` holds stage options (exporter, attention implementation, precision,
    opset, input_int32, batch sizes, ...). Adapters read what they understand and
    ignore the rest. ``progress`` reports long work to the user (the CLI prints it).
    """

    family: str
    source: str | None
    work_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] = field(default=lambda message: None, repr=False)
    results: dict[str, Any] = field(default_factory=dict)

    def option(self, name: str, default: Any = None) -> Any:
        value = self.options.get(name)
        return default if value is None else value

    def add_output(self, label: str, path: str | Path) -> None:
        """Name a file a stage wrote beside the stage results (an intermediate model, a table).

        report.json's ``outputs`` lists it, so the run directory holds only files its report
        names, and the next run into the directory removes it as one of this run's outputs.
        """
        self.results.setdefault("extra_outputs", {})[label] = Path(path)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses/Paths/tuples -> plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj
