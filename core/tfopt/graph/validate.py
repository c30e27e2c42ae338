"""Validation of every model tfopt writes: it loads, it checks, and it computes what its input computed.

A fused model is compared with the model it was derived from (the input ONNX), not with
the source framework: that is the promise of an optimizer ("the same function, faster"),
and it needs nothing but ONNX Runtime. Three checks, cheapest first:

1. ``onnx.checker`` on the written file (structure, SSA, opsets, standard-op schemas).
   A complaint the input has as well is inherited, not tfopt's doing, and is ignored.
2. An ONNX Runtime session on the CPU provider with all graph optimizations, as users
   deploy it: ORT resolves every node against its own schemas, the contrib ops
   (``com.microsoft``) included, and runs their shape inference.
3. Parity on generated feeds (two shapes, padded attention masks): every output, on
   valid (unpadded) positions; NaN and infinity where the input has them, finite values
   within the precision's tolerance scaled by the output's magnitude.

:func:`write_validated` writes a model only if it passes; when a fusion broke it, it finds
the rule by bisection over the rules that fired, rebuilds without it and says so.
"""

from __future__ import annotations

import itertools
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from ..errors import TfoptError, first_line
from ..feeds import GraphInput, axis_sizes_from, feed_for, graph_inputs, session_feed
from ..results import DroppedRule, Validation
from .input_checks import graphs_within

# Max |candidate - reference| over valid finite positions, as a fraction of max(1, max |reference|).
RELATIVE_TOLERANCES = {"fp32": 1e-4, "fp16": 3e-2}
# int8 (dynamic quantization) moves every value a little: require the direction instead.
# A guard against broken conversions, not the accuracy judgement (that is verify's: bert_pt judges
# int8 on pooled embeddings): all-MiniLM-L6-v2's sound per-channel dynamic int8 measures 0.985 here.
INT8_MIN_COSINE = 0.95
# int4 (weight-only, 16 levels per block) moves them more: 0.976 measured on tiny-gpt2's random
# weights, 0.99+ on a trained model (docs/benchmark-gpt2.md); the adapters' verify judges quality.
# Precisions validated through a CPU emulation (the model itself has no CPU kernels: tfopt.bfloat16).
EMULATED = ("bf16",)
EMULATED_LOADS = "(bf16 values computed in fp32, rounded to bf16 where stored)"
# bf16 (judged on its CPU emulation): 8 mantissa bits move every value by up to 0.4% per op; a
# broken conversion (a wrong cast, a missed input) moves the outputs far more than that.
MIN_COSINE = {"int8": INT8_MIN_COSINE, "int4": 0.95, "bf16": 0.99}

# An input whose own outputs move by more than the tolerance when its weights move by one ulp
# (ONNX Runtime's all-ones GPT-2 test graphs: LayerNorm over identical features, catastrophic
# cancellation) cannot be held to it: any change of rounding moves them as much. Its candidate
# is held to NOISE_MULTIPLE x that movement instead (measured only when the plain comparison
# fails: NOISE_PERTURBATIONS random one-ulp moves of every float weight, the largest counts),
# and never to more than MAX_NOISE_BOUND of the output's scale: a fusion bug moves outputs by
# 1e-2 and more (a Gelu left out of a 2-layer model: ~1%).
NOISE_MULTIPLE = 8
NOISE_PERTURBATIONS = 2
MAX_NOISE_BOUND = 1e-3

# Feed shapes: (batch, sequence); batch 2 so the second row is padded, and an odd length.
VALIDATION_SHAPES = ((2, 7), (1, 4))
# Tried last, when no reading runs at the shapes above: graphs with a short length limit (ONNX
# Runtime's GPT-2 test graphs keep an 8-position causal buffer: sequence 7 + past 3 exceeds it).
SHORT_VALIDATION_SHAPES = ((2, 2), (1, 1))  # lengths other than the past's 3
# From this size on (weights on disk), only the first shape is run: every run of an unpacked
# session streams all weights once, the bulk of validation's cost at bert-base size.
LARGE_MODEL_BYTES = 100_000_000

_SUM_OF_SYMBOLS = re.compile(r"^\s*([A-Za-z_][\w]*)\s*\+\s*([A-Za-z_][\w]*)\s*$")


class ValidationFailed(TfoptError):
    def __init__(self, validation: Validation):
        super().__init__(validation.problem)
        self.validation = validation


def _ort_session(path: Path, threads: int = 0, *, optimized: bool = True, initializers: dict[str, Any] | None = None):
    """A CPU session; ``optimized``: with all of ONNX Runtime's graph optimizations, as deployed.

    The reference runs without them: its numbers are then the ONNX semantics of the input
    itself, and an input that ORT's own rewrites break (torch's fp16 LayerNorm form) still
    serves as a reference.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0 = ONNX Runtime's default (one per core)
    options.log_severity_level = 4  # ORT's own warnings and errors reach the user as one line, not as logs
    level = "ORT_ENABLE_ALL" if optimized else "ORT_DISABLE_ALL"
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    # Prepacking re-lays every MatMul weight for speed: most of a session's start-up at
    # bert-base size (0.7 s of 0.8 s here), and pointless for two tiny validation runs.
    options.add_session_config_entry("session.disable_prepacking", "1")
    # Without the arena, what a run allocates goes back when the run ends: a tied LM head's
    # transposed table (1 GB at Llama-3.2-1B's size) would otherwise stay held by the reference
    # while the candidate loads (validation of that model peaked at 1.5x its weights, 1.2x now).
    options.enable_cpu_mem_arena = False
    for name, value in (initializers or {}).items():  # OrtValues the caller keeps alive
        options.add_initializer(name, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _checker_problem(path: Path) -> str | None:
    """``onnx.checker``'s complaint about the file, if any; ops onnx does not know in the default
    domain are judged by ONNX Runtime's schemas instead (:func:`_checked_as_ort_reads_it`)."""
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx raises ValidationError, and others for unreadable data
        problem = first_line(exc)
        return _checked_as_ort_reads_it(path, problem) if problem.startswith("No Op registered for") else problem
    return None


# The domain default-domain ops that only ONNX Runtime registers move to for onnx.checker's second look.
_ORT_ONLY_DOMAIN = "tfopt.onnxruntime-registered"


def _checked_as_ort_reads_it(path: Path, problem: str) -> str | None:
    """``problem`` (onnx has no schema for an op), unless every default-domain op onnx does not
    know at the model's opset is one ONNX Runtime registers there (SimplifiedLayerNormalization,
    LayerNormalization below opset 17): then those nodes are set aside in a domain of their own
    and the checker looks at the rest again (structure, SSA, the other ops), its answer standing.

    ONNX Runtime's loader still resolves each of them against its schemas, with their type and
    shape inference, in validation's next step. The weights are not read: the path-based check
    that gave ``problem`` checked the initializers before the nodes.
    """
    from .ort_schemas import ort_registers

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return problem
    version = next((opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")), None)
    if version is None:
        return problem
    moved = 0
    for graph in graphs_within(model.graph):
        for node in graph.node:
            if node.domain not in ("", "ai.onnx") or onnx.defs.has(node.op_type, version, ""):
                continue
            if not ort_registers(node.op_type, "", version):
                return problem  # neither onnx nor ONNX Runtime knows it
            node.domain, moved = _ORT_ONLY_DOMAIN, moved + 1
    if not moved:
        return problem
    model.opset_import.append(onnx.helper.make_opsetid(_ORT_ONLY_DOMAIN, 1))
    for graph in graphs_within(model.graph):
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:  # a stand-in: checked on the file already
                tensor.ClearField("external_data")
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.dims[:]
                tensor.dims.append(0)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        return first_line(exc)
    return None


def _batch_sizes(specs: list[GraphInput], batch: int) -> dict[str, int]:
    """Symbols that name the batch: any symbol some input has as its first axis (ORT's GPT-2
    format stacks past state as [2, batch_size, heads, past, head_size])."""
    return {spec.dim_names[0]: batch for spec in specs if spec.dim_names and spec.dim_names[0]}


def _symbol_sizes(specs: list[GraphInput], batch: int, sequence: int) -> dict[str, int]:
    """A size for every symbolic dim: past-like symbols differ from the sequence, sums add up."""
    sizes: dict[str, int] = _batch_sizes(specs, batch)
    names = [name for spec in specs for name in spec.dim_names if name]
    for name in names:
        if name in sizes or _SUM_OF_SYMBOLS.match(name) or "total" in name.lower():
            continue  # sums and totals are derived below
        sizes[name] = 3 if "past" in name.lower() else sequence
    past = next((size for name, size in sizes.items() if "past" in name.lower()), 0)
    for name in names:
        if name in sizes:
            continue
        match = _SUM_OF_SYMBOLS.match(name)
        sizes[name] = sum(sizes.get(part, sequence) for part in match.groups()) if match else sequence + past
    return sizes


# The past length of a cache found in the graph: differs from both validation sequences.
PAST_LENGTH = 3
_CACHE_WORDS = ("past", "cache")


def _batch_axis(spec: GraphInput) -> int | None:
    """The batch axis: the first, or the second of ONNX Runtime's stacked past ([2, batch, heads, past, head])."""
    if spec.dims and spec.dims[0] is None:
        return 0
    if len(spec.dims) == 5 and spec.dims[0] == 2 and spec.dims[1] is None:
        return 1
    return None


def _cache_axes(specs: list[GraphInput]) -> dict[str, int]:
    """Float inputs that hold a cache -> their past axis: the axis the graph concatenates new
    values to (``GraphInput.concat_axis``), else, for rank >= 3 inputs named past/cache, the
    one dynamic axis besides the batch (the second last when there are several: [B, H, P, D])."""
    found = {}
    for spec in specs:
        rank = len(spec.dims)
        if spec.dtype.kind != "f" or rank < 3:
            continue
        axis = spec.concat_axis
        if axis is None and any(word in spec.name.lower() for word in _CACHE_WORDS):
            dynamic = [a for a in range(rank) if spec.dims[a] is None and a != _batch_axis(spec)]
            axis = dynamic[0] if len(dynamic) == 1 else rank - 2 if rank - 2 in dynamic else None
        if axis is not None and spec.dims[axis] is None:
            found[spec.name] = axis
    return found


def _cache_reading(specs: list[GraphInput], *, total: bool) -> Callable[[int, int], tuple[dict, dict]]:
    """Sizes read off the graph's structure rather than its symbols (a dynamo export gives each
    input symbols of its own): the batch axes take the batch, every cache's past axis
    :data:`PAST_LENGTH`, a mask's last axis past + sequence (``total``) or the sequence, the
    rest the sequence."""
    caches = _cache_axes(specs)

    def sizes(batch: int, sequence: int) -> tuple[dict[str, int], dict[str, dict[int, int]]]:
        axes: dict[str, dict[int, int]] = {}
        for spec in specs:
            own = axes.setdefault(spec.name, {})
            for axis, dim in enumerate(spec.dims):
                if dim is not None:
                    continue
                if axis == _batch_axis(spec):
                    own[axis] = batch
                elif caches.get(spec.name) == axis:
                    own[axis] = PAST_LENGTH
                elif "mask" in spec.name.lower() and axis == len(spec.dims) - 1 and total:
                    own[axis] = PAST_LENGTH + sequence
                else:
                    own[axis] = sequence
        return {}, axes

    return sizes


def validation_feeds(
    path: Path, *, seed: int = 0, axis_sizes: dict[str, Any] | None = None
) -> list[list[dict[str, np.ndarray]]]:
    """Candidate feed sets for a bare ONNX file, most likely first.

    Without an adapter nothing says how the inputs relate, so several readings are offered:
    every dynamic non-batch axis is the sequence (encoders); symbolic dims named
    ``past*``/``total*``/``a + b`` get consistent sizes of their own (decoders with past);
    then, when the graph concatenates an input to values it computes (a KV cache; or a float
    input named past/cache), that input's axis is a past length and a mask spans past +
    sequence, or the sequence alone; each reading at the usual shapes, then at short ones
    (:data:`SHORT_VALIDATION_SHAPES`). The first set the reference model runs on is used.
    Models of :data:`LARGE_MODEL_BYTES` and more get the first (padded) shape only.

    ``axis_sizes`` (``ModelInfo.axis_sizes``: ``{"samples": [400, 800]}``) sizes named axes
    that 7 and 4 do not fit (a conv front end): shape i takes the i-th size (the last when
    fewer are given).
    """
    from .io import model_files

    specs = graph_inputs(path)
    large = sum(file.stat().st_size for file in model_files(path) if file.is_file()) >= LARGE_MODEL_BYTES
    named = axis_sizes_from(axis_sizes, "ModelInfo.axis_sizes") or {}
    readings: list[Callable[[int, int], tuple[dict, dict]]] = [
        lambda batch, sequence: (_batch_sizes(specs, batch), {}),
        lambda batch, sequence: (_symbol_sizes(specs, batch, sequence), {}),
    ]
    if _cache_axes(specs):
        readings += [_cache_reading(specs, total=True), _cache_reading(specs, total=False)]
    sets: list[list[dict[str, np.ndarray]]] = []
    shape_sets = [VALIDATION_SHAPES[:1] if large else VALIDATION_SHAPES, SHORT_VALIDATION_SHAPES]
    for shapes, reading in itertools.product(shape_sets, readings):
        rng = np.random.default_rng(seed)
        feeds = []
        for index, (batch, sequence) in enumerate(shapes):
            sizes, axes = reading(batch, sequence)
            sizes.update(_named_sizes(named, index))
            for spec in specs:  # named axes keep the sizes they were given
                for axis, name in enumerate(spec.dim_names):
                    if name in named:
                        axes.get(spec.name, {}).pop(axis, None)
            feeds.append(feed_for(specs, batch, sequence, rng=rng, dim_sizes=sizes, input_axes=axes))
        if not any(len(known) == len(feeds) and all(map(_same_feed, known, feeds)) for known in sets):
            sets.append(feeds)
    return sets


def _named_sizes(axis_sizes: dict[str, tuple[int, ...]], index: int) -> dict[str, int]:
    """The size each named axis takes in validation shape ``index`` (sizes as ``axis_sizes_from`` checked them)."""
    return {name: sizes[min(index, len(sizes) - 1)] for name, sizes in axis_sizes.items()}


def _same_feed(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def _valid_rows(feed: dict[str, np.ndarray], output: np.ndarray) -> np.ndarray | None:
    """Positions of ``output`` that padding does not make meaningless, or None for all.

    An attention mask (batch, T) marks the valid tokens; an output laid out (batch, S, ...)
    with S <= T covers the last S of them (the new tokens, after any past).
    """
    mask = next((v for k, v in feed.items() if "mask" in k.lower() and v.ndim == 2), None)
    if mask is None or output.ndim < 2 or output.shape[0] != mask.shape[0] or not 0 < output.shape[1] <= mask.shape[1]:
        return None
    rows = mask[:, mask.shape[1] - output.shape[1]:].astype(bool)
    return rows.reshape(rows.shape + (1,) * (output.ndim - 2))


def compare_outputs(
    reference: np.ndarray, actual: np.ndarray, valid: np.ndarray | None, precision: str, floor: float = 0.0
) -> tuple[float, str | None]:
    """(score, problem): NaN/inf patterns must agree; finite values within the precision's bound
    (or within ``floor``, relative as the bound, where that is larger: the input's own noise)."""
    if reference.shape != actual.shape:
        return float("inf"), f"shape {list(actual.shape)} instead of {list(reference.shape)}"
    reference = reference.astype(np.float64) if reference.dtype.kind == "f" else reference
    actual = actual.astype(np.float64) if actual.dtype.kind == "f" else actual
    if valid is not None:
        keep = np.broadcast_to(valid, reference.shape)
        reference, actual = reference[keep], actual[keep]
    if reference.dtype.kind != "f" or actual.dtype.kind != "f":
        different = int(np.count_nonzero(reference != actual))
        return float(different), f"{different} values differ" if different else None
    ref_nan, act_nan = np.isnan(reference), np.isnan(actual)
    if (ref_nan != act_nan).any():
        return float("inf"), f"{int((act_nan & ~ref_nan).sum())} NaN where the input computes a number, {int((ref_nan & ~act_nan).sum())} numbers where it computes NaN"
    ref_inf, act_inf = np.isinf(reference), np.isinf(actual)
    if (ref_inf != act_inf).any() or (reference[ref_inf] != actual[act_inf]).any():
        return float("inf"), "infinities differ from the input's"
    finite = ~(ref_nan | ref_inf)
    reference, actual = reference[finite], actual[finite]
    if reference.size == 0:
        return 0.0, None
    if precision in MIN_COSINE:
        norms = np.linalg.norm(reference) * np.linalg.norm(actual)
        cosine = float(reference @ actual / norms) if norms else float(np.array_equal(reference, actual))
        score = 1.0 - cosine
        bound = MIN_COSINE[precision]
        return score, None if cosine >= bound else f"cosine similarity {cosine:.4f} < {bound}"
    scale = max(1.0, float(np.abs(reference).max()))
    score = float(np.abs(actual - reference).max()) / scale
    bound = max(RELATIVE_TOLERANCES[precision], floor)
    return score, None if score <= bound else f"max difference {score * scale:.3g} (> {bound:.3g} x {scale:.3g})"


_HALF_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def computes_in_half(path: Path) -> bool:
    """Whether a model holds half-precision weights, inputs or outputs, or casts to half precision."""
    graph = onnx.load(str(path), load_external_data=False).graph
    if any(init.data_type in _HALF_TYPES for init in graph.initializer):
        return True
    if any(value.type.tensor_type.elem_type in _HALF_TYPES for value in (*graph.input, *graph.output)):
        return True
    return any(
        node.op_type == "Cast" and any(attr.name == "to" and attr.i in _HALF_TYPES for attr in node.attribute)
        for node in graph.node
    )


class Reference:
    """The model a candidate must match: its session, feeds and outputs, computed once.

    Bisection validates many candidates against one reference; this keeps its cost to one
    session and one set of runs. :meth:`prefetch` computes them on a second thread while the
    caller fuses: fusion is single-threaded Python, and ONNX Runtime releases the GIL, so on
    a two-core machine the reference costs almost no wall time.
    """

    def __init__(self, path: str | Path, *, axis_sizes: dict[str, Any] | None = None):
        self.path = Path(path)
        self.axis_sizes = axis_sizes  # sizes of named axes for the generated feeds (validation_feeds)
        self._state: tuple | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._optimized_failure: bool | None = None
        self._optimized_drift: str | None = None  # "" once known not to change
        self._noise_found: dict[str, float] | None = None  # output -> relative movement under one-ulp weights

    def prefetch(self) -> "Reference":
        """Start computing the reference outputs in the background; :meth:`validate` waits for them."""
        if self._thread is None and self._state is None:
            self._thread = threading.Thread(target=self._load_quietly, args=(1,), name="tfopt-reference", daemon=True)
            self._thread.start()
        return self

    def _load_quietly(self, threads: int) -> None:
        try:
            self._state = self._compute(threads)
        except BaseException as exc:  # re-raised by _load in the caller's thread
            self._error = exc

    def _load(self) -> tuple:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error
        if self._state is None:
            self._state = self._compute(0)
        return self._state

    def _compute(self, threads: int) -> tuple:
        notes: list[str] = []
        checker = _checker_problem(self.path)
        try:
            session = _ort_session(self.path, threads, optimized=False)
        except Exception as exc:
            raise TfoptError(
                f"{self.path}: the input does not load in ONNX Runtime ({first_line(exc)}), so its optimized "
                "form cannot be validated; pass --no-validate to optimize it anyway"
            ) from None
        feeds, outputs, failure = [], [], None
        for candidate_feeds in validation_feeds(self.path, axis_sizes=self.axis_sizes):
            try:
                names = [o.name for o in session.get_outputs()]
                outputs = [dict(zip(names, session.run(None, session_feed(session, feed)))) for feed in candidate_feeds]
                feeds = candidate_feeds
                break
            except Exception as exc:
                failure = first_line(exc)
        if not feeds:
            hint = "; give its axes sizes that fit with ModelInfo.axis_sizes or --option 'axis_sizes={...}'"
            notes.append(f"parity not checked: the input does not run on generated inputs ({failure}{hint})")
        return checker, feeds, outputs, notes, computes_in_half(self.path)

    def _fails_when_optimized(self) -> bool:
        """Whether the input itself fails to load with ONNX Runtime's graph optimizations on."""
        if self._optimized_failure is None:
            try:
                _ort_session(self.path)
                self._optimized_failure = False
            except Exception:
                self._optimized_failure = True
        return self._optimized_failure

    def validate(self, candidate: str | Path, precision: str = "fp32") -> Validation:
        """Check ``candidate`` against this reference; never raises for a bad candidate."""
        start = time.perf_counter()
        candidate = Path(candidate)
        checker, feeds, outputs, notes, half = self._load()
        if half and precision == "fp32":
            precision = "fp16"  # the input computes in half precision itself: fusion moves its rounding
        result = Validation(passed=False, precision=precision, notes=list(notes))

        def done(problem: str | None) -> Validation:
            result.passed = problem is None
            result.problem = problem
            result.seconds = time.perf_counter() - start
            return result

        problem = _checker_problem(candidate)
        if problem and problem != checker:
            return done(f"the ONNX checker rejects it ({problem})")
        try:
            session = _ort_session(candidate)
        except Exception as exc:
            if not self._fails_when_optimized():
                return done(f"ONNX Runtime cannot load it ({first_line(exc)})")
            try:  # ORT's own optimizations break the input as well: not this model's doing
                session = _ort_session(candidate, optimized=False)
            except Exception as again:
                return done(f"ONNX Runtime cannot load it ({first_line(again)})")
            result.notes.append(f"ONNX Runtime's graph optimizations fail on the input too ({first_line(exc)}); compared without them")
        wanted = list(outputs[0]) if outputs else []
        present = {o.name for o in session.get_outputs()}
        lost = [name for name in wanted if name not in present]
        if lost:
            return done(f"output(s) {', '.join(lost)} missing")
        problem, difference = _parity(session, feeds, outputs, precision, result)
        drift = self._optimizations_change_input(precision) if difference else None
        if drift:
            # ORT's own fusions miscompute the input (its LayerNorm fusion takes Sub(mean, x) and
            # Pow(d, p) for any p as LayerNorm): the candidate is held to the ONNX semantics instead.
            result.notes.append(
                f"ONNX Runtime's graph optimizations change what the input itself computes ({drift}); "
                "compared without them; with them ONNX Runtime miscomputes this model as it does the input"
            )
            result.max_diff, result.feeds = 0.0, 0
            try:
                session = _ort_session(candidate, optimized=False)
                problem, difference = _parity(session, feeds, outputs, precision, result)
            except Exception as exc:
                problem, difference = f"ONNX Runtime cannot load it ({first_line(exc)})", None
        if difference and precision in RELATIVE_TOLERANCES:
            problem = self._judged_by_noise(session, precision, result, problem)
        return done(problem)

    def _judged_by_noise(self, session, precision: str, result: Validation, problem: str) -> str | None:
        """``problem``, or None when the candidate is within :data:`NOISE_MULTIPLE` x the input's
        own rounding noise (capped at :data:`MAX_NOISE_BOUND`) and the noise exceeds the tolerance."""
        noise = self._noise(precision)
        bound = RELATIVE_TOLERANCES[precision]
        floors = {name: min(NOISE_MULTIPLE * moved, MAX_NOISE_BOUND) for name, moved in noise.items() if NOISE_MULTIPLE * moved > bound}
        if not floors:
            return problem
        _, feeds, outputs, _, _ = self._load()
        judged = Validation(passed=False, precision=precision)
        again, _ = _parity(session, feeds, outputs, precision, judged, floors)
        noisy = ", ".join(f"{name!r} {noise[name]:.1e}" for name in floors)
        if again is not None:
            return f"{again}; even {NOISE_MULTIPLE}x the input's own rounding noise ({noisy} of the scale, capped at {MAX_NOISE_BOUND:g}) is exceeded"
        result.max_diff, result.feeds = judged.max_diff, judged.feeds
        result.notes.append(
            f"the input is ill-conditioned: its outputs move by {noisy} of their scale when its float weights move by one ulp "
            f"(its own rounding noise); compared within {NOISE_MULTIPLE}x that (at most {MAX_NOISE_BOUND:g}) instead of {bound:g}"
        )
        return None

    def _noise(self, precision: str) -> dict[str, float]:
        """Per output, how far the input's outputs move (relative, as compared) when every float
        weight moves by one ulp up or down at random: the largest of :data:`NOISE_PERTURBATIONS`
        tries. Zeros, non-finite values and scalars (constants a comparison may test) stay;
        an output whose NaN/inf pattern moves counts as no noise. Computed once, on demand."""
        if self._noise_found is None:
            self._noise_found = {}
            _, feeds, outputs, _, _ = self._load()
            try:
                weights = [
                    (init.name, onnx.numpy_helper.to_array(init, base_dir=str(self.path.parent)))
                    for init in onnx.load(str(self.path), load_external_data=False).graph.initializer
                    if onnx.helper.tensor_dtype_to_np_dtype(init.data_type).kind == "f"
                ]
            except Exception:  # unreadable weights: no noise, the plain bound stands
                return self._noise_found
            import onnxruntime as ort

            for seed in range(NOISE_PERTURBATIONS):
                rng = np.random.default_rng(seed)
                moved = {}
                for name, array in weights:
                    if array.size < 2:
                        continue
                    up = rng.integers(0, 2, size=array.shape).astype(bool)
                    nudged = np.where(np.isfinite(array) & (array != 0), np.nextafter(array, np.where(up, np.inf, -np.inf).astype(array.dtype)), array)
                    moved[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(nudged, dtype=array.dtype))
                try:
                    nudged_session = _ort_session(self.path, optimized=False, initializers=moved)
                    for feed, expected in zip(feeds, outputs):
                        produced = dict(zip(expected, nudged_session.run(list(expected), session_feed(nudged_session, feed))))
                        for name, value in expected.items():
                            score, problem = compare_outputs(value, produced[name], _valid_rows(feed, value), precision)
                            finite = score if np.isfinite(score) and (problem is None or problem.startswith("max difference")) else 0.0
                            self._noise_found[name] = max(self._noise_found.get(name, 0.0), finite)
                except Exception:
                    return self._noise_found
        return self._noise_found

    def _optimizations_change_input(self, precision: str) -> str | None:
        """How the input's own outputs change under ONNX Runtime's graph optimizations; None if they do not."""
        if self._optimized_drift is None:
            _, feeds, outputs, _, _ = self._load()
            self._optimized_drift = ""
            try:
                scratch = Validation(passed=False, precision=precision)
                _, difference = _parity(_ort_session(self.path), feeds, outputs, precision, scratch)
                self._optimized_drift = difference or ""
            except Exception:  # does not load optimized: handled by _fails_when_optimized
                pass
        return self._optimized_drift or None


def _parity(
    session, feeds, outputs, precision: str, result: Validation, floors: dict[str, float] | None = None
) -> tuple[str | None, str | None]:
    """Run ``session`` on every feed against the reference outputs: (problem, the difference alone if it is one).

    ``floors``: per output, a relative bound the input's own noise sets (see :data:`NOISE_MULTIPLE`)."""
    wanted = list(outputs[0]) if outputs else []
    for feed, expected in zip(feeds, outputs):
        try:
            produced = dict(zip(wanted, session.run(wanted, session_feed(session, feed))))
        except Exception as exc:
            return f"ONNX Runtime cannot run it ({first_line(exc)})", None
        for name in wanted:
            valid = _valid_rows(feed, expected[name])
            score, problem = compare_outputs(expected[name], produced[name], valid, precision, (floors or {}).get(name, 0.0))
            result.max_diff = max(result.max_diff, score)
            if problem:
                shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feed.items())
                return f"output {name!r} differs from the input model's ({problem}; inputs {shapes})", f"{name!r}: {problem}"
        result.feeds += 1
    return None, None


@dataclass
class WriteOutcome:
    model: Any  # the ir.Model written
    built: Any  # whatever ``build`` returned besides the model (e.g. FusionStats)
    validation: Validation | None
    dropped: list[DroppedRule] = field(default_factory=list)


def write_validated(
    build: Callable[[frozenset[str]], tuple[Any, Any, list[str]]],
    output_path: str | Path,
    reference: str | Path | Reference,
    *,
    refuse: str | Path | None = None,
    convert: Callable[[Any], Any] | None = None,
    precision: str = "fp32",
    validate: bool = True,
    external: bool = False,
    progress: Callable[[str], None] = lambda message: None,
) -> WriteOutcome:
    """Build a model, validate it against ``reference`` and write it only if it passes.

    ``build(skip)`` returns ``(ir_model, extra, fired)``: the model built without the rules
    named in ``skip``, anything the caller wants back, and the names of the rules that
    changed the graph, in the order they ran. When the model fails validation, the rule
    that broke it is found by bisection over ``fired`` (each step rebuilds), dropped, and
    the search repeats until the model passes. A model that fails even with every rule
    dropped is a :class:`ValidationFailed` with nothing written.

    ``convert`` turns the fused model into the ``precision`` written (fp16). The fusion is
    then validated at fp32 first: fp16's tolerance is loose enough to hide a wrong rule
    (a Gelu left out of a small model moves its output by ~1% of its scale). ``external``:
    weights go to ``<output>.data`` whatever their size (the input kept them there).
    """
    from .io import save_model

    reference = reference if isinstance(reference, Reference) else Reference(reference)
    if validate:
        reference.prefetch()
    output_path = Path(output_path)
    model, extra, fired = build(frozenset())
    if not validate:
        final = convert(model) if convert else model
        save_model(final, output_path, refuse=refuse, external=external)
        return WriteOutcome(final, extra, None)
    found: dict[str, Validation] = {}

    def commit(model: Any) -> Any:
        """Write the final model, validated at its precision on the temp copy before it moves into place."""

        def check(path: Path) -> None:
            found["last"] = outcome = reference.validate(path, precision)
            if not outcome.passed:
                raise ValidationFailed(outcome)

        final = convert(model) if convert else model
        try:
            save_model(final, output_path, refuse=refuse, check=check, external=external)
        except ValidationFailed as failure:
            if convert is None:
                raise
            failure.validation.problem = f"the {precision} conversion broke the model ({failure.validation.problem}); nothing written"
            raise
        return final

    if convert is None:
        try:
            return WriteOutcome(commit(model), extra, found["last"])
        except ValidationFailed as failure:
            problem = failure.validation.problem
    else:
        problem = _problem(model, reference, "fp32", output_path)
    dropped: list[DroppedRule] = []
    if problem is not None:
        if not fired:
            raise ValidationFailed(Validation(passed=False, problem=f"the model fails validation ({problem}); nothing written"))
        progress(f"the optimized model failed validation ({problem}); looking for the rule that broke it ...")
        model, extra, dropped = _without_breaking_rules(build, fired, problem, reference, "fp32" if convert else precision, output_path, progress)
    return WriteOutcome(commit(model), extra, found["last"], dropped)


def _without_breaking_rules(build, fired, problem, reference, precision, output_path, progress):
    """(model, extra, dropped): rebuilt without each rule bisection blames, until it validates."""
    first_problem, skip, dropped = problem, set(), []
    while problem is not None:
        candidates = _with_stand_ins(build, skip, [name for name in dict.fromkeys(fired) if name not in skip])
        if not candidates or _build_problem(build, skip | set(candidates), reference, precision, output_path):
            raise ValidationFailed(
                Validation(
                    passed=False,
                    precision=precision,
                    problem=f"the optimized model fails validation even with no fusion rule applied ({first_problem}); nothing written",
                )
            )
        good, bad = 0, len(candidates)  # enabling candidates[:good] passes; candidates[:bad] fails
        while bad - good > 1:
            middle = (good + bad) // 2
            if _build_problem(build, skip | set(candidates[middle:]), reference, precision, output_path):
                bad = middle
            else:
                good = middle
        culprit = candidates[bad - 1]
        skip.add(culprit)
        dropped.append(DroppedRule(culprit, problem))
        progress(f"rule {culprit} broke the model ({problem}); rebuilding without it")
        model, extra, fired = build(frozenset(skip))
        problem = _problem(model, reference, precision, output_path)
    return model, extra, dropped


def _with_stand_ins(build, skip: set[str], candidates: list[str]) -> list[str]:
    """``candidates`` and every rule that fires once they are all left out, until none more does.

    A rule left out can let a sibling match in its place (``SkipLayerNorm+Sum`` where
    ``SkipLayerNorm`` no longer fires) and break the model the same way; the bisection must be
    able to blame it too, and "no rule applied" must mean none.
    """
    while candidates:
        _, _, fired = build(frozenset(skip | set(candidates)))
        stand_ins = [name for name in dict.fromkeys(fired) if name not in skip and name not in candidates]
        if not stand_ins:
            break
        candidates = candidates + stand_ins
    return candidates


def _build_problem(build, skip: set[str], reference: Reference, precision: str, output_path: Path) -> str | None:
    model, _, _ = build(frozenset(skip))
    return _problem(model, reference, precision, output_path)


def _problem(model, reference: Reference, precision: str, output_path: Path) -> str | None:
    """Why ``model`` fails validation (saved to a scratch dir beside the output), or None."""
    from .io import save_model

    parent = output_path.parent if output_path.parent.is_dir() else None
    scratch = Path(tempfile.mkdtemp(prefix=".tfopt-validate-", dir=parent))
    try:
        return reference.validate(save_model(model, scratch / output_path.name), precision).problem
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def dropped_rule_line(dropped: DroppedRule) -> str:
    """The one warning line for a rule validation left out."""
    return f"fusion rule {dropped.rule} was left out: with it, {dropped.problem}"


def validation_line(validation: Validation | None) -> str:
    """One line saying what was checked before the model was written."""
    if validation is None:
        return "not validated (--no-validate)"
    loads = f"its CPU emulation {EMULATED_LOADS} loads" if validation.precision in EMULATED else "loads"
    if not validation.feeds:
        return f"validated: {loads} in ONNX Runtime; " + "; ".join(validation.notes)
    bound = "cosine distance" if validation.precision in MIN_COSINE else "relative difference"
    return (
        f"validated: {loads} in ONNX Runtime and matches the input on {validation.feeds} generated "
        f"input{'s' if validation.feeds != 1 else ''} "
        f"(max {bound} {validation.max_diff:.1e}, {validation.seconds:.2f} s)"
    ) + "".join(f"; {note}" for note in validation.notes)


def validate_written(
    candidate: str | Path, reference: str | Path, precision: str, *, axis_sizes: dict[str, Any] | None = None
) -> Validation:
    """Validate a model a converter already wrote (fp16, int8) against the model it converted.

    A model that fails is removed, with its own external data, and the failure raised:
    nothing that fails validation stays on disk.
    """
    from .io import model_files

    candidate = Path(candidate)
    result = Reference(reference, axis_sizes=axis_sizes).validate(candidate, precision)
    if not result.passed:
        for path in model_files(candidate) - model_files(reference):
            path.unlink(missing_ok=True)
        result.problem = f"{candidate.name}: the {precision} model failed validation ({result.problem}); it was removed"
        raise ValidationFailed(result)
    return result
