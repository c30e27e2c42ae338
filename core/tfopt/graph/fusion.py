"""Run the fusion rules over a model and account for what fired."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import onnx_ir as ir
from onnxscript.optimizer import remove_unused_nodes
from onnxscript.rewriter.pattern import RewriteRuleSet

from ..errors import TfoptError
from ..results import FUSION_NAMES, TARGETS, FuseResult, ModelInfo
from . import leftovers
from .io import load_model
from .model_types import (  # noqa: F401 (the counts stay importable from here)
    ATTENTION_KEY,
    GELU_KEY,
    GELU_OPS,
    MODEL_TYPES,
    decoder_counts,
    encoder_counts,
    llm_counts,
    model_type_of,
)
from .passes import cleanup, inputs_to_int32, prepare
from .opset_raise import can_raise
from .packed_projections import pack_shared_input_matmuls
from . import cpu_forms
from .rules import activation, attention, cached_attention, decoder_forms, embedding, head_folded, linear, normalization, rms_norm, rotary
from .validate import Reference, write_validated
from .values import MS_DOMAIN


@dataclass
class FusionStats:
    op_counts: dict[str, int]
    rule_counts: dict[str, int]
    expected: dict[str, int]
    missing: list[str]
    leftover: dict[str, int] = field(default_factory=dict)  # tfopt.graph.leftovers: primitives still in the graph
    num_heads: int = 0
    hidden_size: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class FusionRules:
    """A family's (or an extension's) own rewrite rules, and where they run in the shared plan.

    ``name`` is a fusion name like the shared ones: ``disabled=[name]`` turns the group off.
    ``rules`` are onnxscript ``RewriteRule`` objects (``pattern``/``check``/``rewrite``), or a
    function of the run's :class:`ModelInfo` returning them (a rule built for the model's head
    count, hidden size or layer count); each rule's own name is what ``rule_counts`` and
    validation's bisection report.
    ``before`` is the shared stage (one of :data:`PLAN_STAGES`) the group runs just before,
    or None to run after every shared rule. Rules that make a graph match a shared rule
    (a family's mask or reshape form) go before it; rules that fuse what the shared ones
    leave go last.
    """

    name: str
    rules: Sequence[Any] | Callable[[ModelInfo], Sequence[Any]]
    before: str | None = "attention"

    def rules_for(self, info: ModelInfo) -> list[Any]:
        """The group's rules for this model (a factory is called with its ModelInfo)."""
        if isinstance(self.rules, Sequence):
            return list(self.rules)
        built = self.rules(info)
        if not isinstance(built, Sequence):
            raise TfoptError(f"FusionRules {self.name!r}: its rule factory returned {type(built).__name__}, not a list of rules")
        return list(built)


# The shared plan's stages, in the order they run (FusionRules.before names one of them).
PLAN_STAGES = ("linear", "layer_norm", "gelu", "fast_gelu", "bias_gelu", "embed_layer_norm", "attention", "skip_layer_norm")


def count_ops(model: ir.Model) -> dict[str, int]:
    counts = Counter(node.op_type for node in model.graph)
    return dict(sorted(counts.items()))


def expected_counts(info: ModelInfo, num_layers: int) -> dict[str, int]:
    """Fused-op counts a fully fused model has ("A|B" = sum of both); {} when nothing is known.

    ``info.expected`` (the adapter's own statement) wins; else the built-in counts of
    ``info.model_type`` (one of :data:`MODEL_TYPES`, :mod:`.model_types`) for ``num_layers`` layers.
    """
    if info.expected is not None:
        return dict(info.expected)
    model_type = model_type_of(info.model_type)
    if num_layers <= 0 or model_type is None:
        return {}
    return model_type.counts(num_layers)


NO_EXPECTATION = "no expected fusion counts"  # how the line for an unchecked fusion begins


def no_expectation_line(info: ModelInfo) -> str:
    """The missing-fusion line for a model nothing is expected of: fusion would go unchecked."""
    if info.model_type in MODEL_TYPES:
        return (
            f"{NO_EXPECTATION}: model type {info.model_type!r} with no layers found"
            " (no Softmax in the graph and ModelInfo.num_layers is 0): fusion is unchecked"
        )
    return (
        f"{NO_EXPECTATION} for model type {info.model_type!r}: fusion is unchecked"
        f" (built-in types: {', '.join(MODEL_TYPES)}; an adapter states its own in ModelInfo.expected)"
    )


def missing_fusions(
    expected: dict[str, int],
    op_counts: dict[str, int],
    disabled: Iterable[str] = (),
    leftover: dict[str, int] | None = None,
) -> list[str]:
    """One line per expected fusion that fell short, plus one per kind of primitive left unfused.

    ``leftover``: :func:`tfopt.graph.leftovers.leftover_primitives` of the fused graph; without
    it the Softmax count of ``op_counts`` stands in. A leftover Softmax, norm chain, gelu formula
    or rotate-half is a fusion that did not happen, whatever the family expects (unless the
    fusion that replaces it is disabled).
    """
    missing = []
    for key, want in expected.items():
        have = sum(op_counts.get(op_type, 0) for op_type in key.split("|"))
        if have < want:
            missing.append(f"{key}: expected {want}, found {have}")
    if leftover is None:
        leftover = {leftovers.SOFTMAX: op_counts["Softmax"]} if op_counts.get("Softmax") else {}
    missing += leftovers.leftover_lines(leftover, set(disabled))
    return missing


def fusion_shortfall(missing: Iterable[str]) -> list[str]:
    """The ``missing`` lines that say a fusion did not happen (a count short, a primitive left).

    The line saying nothing was expected is a warning only: with no claim and no primitive
    left, nothing is known to be missing.
    """
    return [line for line in missing if not line.startswith(NO_EXPECTATION)]


def _rule_plan(info: ModelInfo, target: str, standard_ops: bool = False) -> list[tuple[str, list]]:
    """(fusion name, rules) in the order they must run: LN before SkipLN, EmbedLN before SkipLN.

    ``standard_ops``: the model's opset can be raised to 23 exactly, so rotary embeddings and
    attention over a key/value cache may become ONNX's own RotaryEmbedding and Attention.
    """
    decoder_llm = rotary.rotary_rules() + cached_attention.cached_attention_rules() if standard_ops else []
    biased = cached_attention.additive_mask_attention_rules() if standard_ops else []
    plan = [
        ("linear", linear.linear_rules()),  # canonical form for the rules below; always on
        ("layer_norm", normalization.layer_norm_rules() + rms_norm.rms_norm_rules()),
        ("gelu", activation.gelu_rules()),
        ("fast_gelu", activation.fast_gelu_rules()),
        ("bias_gelu", activation.bias_gelu_rules()),
        ("embed_layer_norm", embedding.embed_layer_norm_rules()),
        ("attention", decoder_forms.decoder_form_rules()),  # older GPT-2 forms -> the one the rule matches
        ("attention", head_folded.head_folded_rules()),  # heads folded into the batch (DeBERTa) -> 4-D, select -> additive mask
        ("attention", attention.attention_rules(info.num_heads, target, info.hidden_size)),
        ("attention", decoder_llm),  # after the GPT-2 rule, which also sees a past Concat
        ("attention", biased),  # what no rule above took: the graph's own additive mask kept as is
        ("linear", linear.linear_rules()),  # again: attention fusion exposes GPT-2's c_proj Gemm
        ("skip_layer_norm", normalization.skip_layer_norm_rules()),
    ]
    return plan  # --disable filters in _with_groups, the adapters' groups included


def _with_groups(
    plan: list[tuple[str, list]], groups: Sequence[FusionRules], disabled: set[str], info: ModelInfo
) -> list[tuple[str, list]]:
    """The full plan with each extra group just before the first stage it names (or at the end), then
    the disabled fusions taken out."""
    plan = list(plan)
    for group in groups:
        names = [name for name, _ in plan]
        at = names.index(group.before) if group.before in names else len(plan)
        plan.insert(at, (group.name, group.rules_for(info)))
    return [(name, rules) for name, rules in plan if name not in disabled]


def _checked_groups(groups: Iterable[Any]) -> list[FusionRules]:
    """Extra rule groups, refused in one line when malformed (a plugin author's mistake)."""
    checked = []
    for group in groups:
        if not isinstance(group, FusionRules):
            raise TfoptError(f"extra rules must be tfopt.graph.FusionRules, got {type(group).__name__}")
        if group.before is not None and group.before not in PLAN_STAGES:
            raise TfoptError(f"FusionRules {group.name!r}: before={group.before!r} is no stage; known: {', '.join(PLAN_STAGES)}")
        if group.name in FUSION_NAMES or group.name == "linear":
            raise TfoptError(f"FusionRules name {group.name!r} is taken by a shared fusion; choose another")
        checked.append(group)
    return checked


def fuse_model(
    model: ir.Model,
    info: ModelInfo,
    *,
    disabled: Iterable[str] = (),
    input_int32: bool = False,
    target: str = "cpu",
    skip_rules: Iterable[str] = (),
    extra_rules: Iterable[FusionRules] = (),
    expected: dict[str, int] | None = None,
    tracer: Any = None,
    cpu_layer_norm: bool = False,
) -> FusionStats:
    """Rewrite ``model`` in place into ONNX Runtime contrib ops; say what fired and what did not.

    ``target`` ("cpu" or "cuda") picks the attention op that runs fastest there.
    ``cpu_layer_norm`` (CPU target only) writes each fp32 SkipLayerNormalization as
    Sum + LayerNormalization, which ONNX Runtime's CPU provider runs several times faster
    (:mod:`.cpu_forms`); expected SkipLayerNormalization counts are then met by the Sums.
    Off by default, so the op set is ONNX Runtime's optimizer's.
    ``skip_rules``: rule names (as in ``rule_counts``) not to apply; validation uses it
    to drop a rule that broke a model.
    ``extra_rules``: :class:`FusionRules` groups run inside the shared plan, after those of
    ``info.rules``. ``expected``: the fused-op counts to check, overriding ``info.expected``
    and the model type's built-in counts. When nothing is expected, ``missing`` says so.
    ``tracer``: an onnxscript ``MatchingTracer`` that records, for each rule at its place
    in the plan, its best match and why it failed (``tracer.report()`` prints it); the
    fusion itself runs as without it. How to debug a rule inside the real plan.
    """
    if target not in TARGETS:
        raise TfoptError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    if cpu_layer_norm and target != "cpu":
        raise TfoptError(f"cpu_layer_norm is the CPU provider's form; target {target!r} keeps SkipLayerNormalization")
    groups = _checked_groups([*info.rules, *extra_rules])
    disabled = set(disabled)
    unknown = disabled - set(FUSION_NAMES) - {group.name for group in groups}
    if unknown:
        raise TfoptError(f"unknown fusion name(s) {sorted(unknown)}; known: {', '.join(FUSION_NAMES)}")
    if info.num_heads and info.hidden_size and info.hidden_size % info.num_heads:
        raise TfoptError(f"num_heads={info.num_heads} does not divide hidden_size={info.hidden_size}")
    start = time.perf_counter()
    prepare(model)
    num_layers = info.num_layers or sum(1 for node in model.graph if node.op_type == "Softmax")
    rule_counts: dict[str, int] = {}
    skip_rules = set(skip_rules)
    standard_ops = can_raise(model, rotary.STANDARD_OPSET)
    for _, rules in _with_groups(_rule_plan(info, target, standard_ops), groups, disabled, info):
        for rule in rules:
            if rule.name in skip_rules:
                rule_counts.setdefault(rule.name, 0)
                continue
            if tracer is not None:  # onnxscript only records when tracing: record, then apply
                RewriteRuleSet([rule]).apply_to_model(model, tracer=tracer)
            applied = RewriteRuleSet([rule]).apply_to_model(model)
            rule_counts[rule.name] = rule_counts.get(rule.name, 0) + applied
        # Rules that keep matched nodes leave them dead; dead readers would block later matches.
        remove_unused_nodes(model)
    decoder_llm = any(count and name.startswith(cached_attention.CACHED_ATTENTION) for name, count in rule_counts.items())
    if decoder_llm and "PackedProjections" not in skip_rules:
        # a decoder LLM: its Q/K/V and gate/up projections become one MatMul each (packed_projections.py)
        rule_counts["PackedProjections"] = pack_shared_input_matmuls(model.graph)
    cpu_skip_layer_norms = cpu_layer_norm and "skip_layer_norm" not in disabled
    if cpu_skip_layer_norms and CPU_SKIP_LAYER_NORM not in skip_rules:
        rule_counts[CPU_SKIP_LAYER_NORM] = cpu_forms.skip_layer_norms_for_cpu(model)
    cleanup_notes = cleanup(model)
    notes = list(model.meta.get("tfopt.load_notes", ()))  # the loader's repairs (graph.io.LOAD_NOTES)
    notes += cleanup_notes
    if input_int32:
        converted = inputs_to_int32(model)
        notes.append(f"inputs now int32: {', '.join(converted) or 'none'}")
    op_counts = count_ops(model)
    if expected is None:
        expected = expected_counts(info, num_layers)
        stated = info.expected is not None or bool(expected)  # an adapter's explicit {} is a statement
    else:
        stated = True
    expected = dict(expected)
    for name in disabled:  # a disabled fusion is not expected
        expected.pop(_FUSION_OPS.get(name, ""), None)
    if cpu_skip_layer_norms:
        expected = _with_cpu_skip_layer_norms(expected)
    leftover = leftovers.leftover_primitives(model)
    missing = missing_fusions(expected, op_counts, disabled, leftover)
    if not stated:
        missing.insert(0, no_expectation_line(info))
    heads = _attention_heads(model)
    return FusionStats(
        op_counts=op_counts,
        rule_counts=rule_counts,
        expected=expected,
        missing=missing,
        leftover=leftover,
        num_heads=heads[0],
        hidden_size=heads[1],
        seconds=time.perf_counter() - start,
        notes=notes,
    )


CPU_SKIP_LAYER_NORM = "SkipLayerNormForCpu"  # rule_counts name of cpu_forms' rewrite (validation may drop it)


def _with_cpu_skip_layer_norms(expected: dict[str, int]) -> dict[str, int]:
    """Expected counts with SkipLayerNormalization also met by its CPU form (one Sum each, :mod:`.cpu_forms`)."""
    renamed = {}
    for key, count in expected.items():
        parts = key.split("|")
        if cpu_forms.SKIP_LAYER_NORM in parts and cpu_forms.LOWERED_OP not in parts:
            parts.insert(parts.index(cpu_forms.SKIP_LAYER_NORM) + 1, cpu_forms.LOWERED_OP)
        renamed["|".join(parts)] = renamed.get("|".join(parts), 0) + count
    return renamed


_FUSION_OPS = {
    "attention": "Attention|MultiHeadAttention",
    "embed_layer_norm": "EmbedLayerNormalization",
    "skip_layer_norm": "SkipLayerNormalization",
    "gelu": GELU_KEY,  # without bias_gelu the plain Gelu ops still count
}


def _attention_heads(model: ir.Model) -> tuple[int, int]:
    """(num_heads, hidden_size) of the first fused Attention, detected from the graph; (0, 0) if none."""
    bias_index = {"Attention": 2, "MultiHeadAttention": 3}
    for node in model.graph:
        if node.op_type in bias_index and node.domain == MS_DOMAIN:
            index = bias_index[node.op_type]
            bias = node.inputs[index].const_value if len(node.inputs) > index and node.inputs[index] is not None else None
            hidden = bias.shape[0] // 3 if bias is not None else 0
            # The width the projections read (the model's hidden size, also with pruned heads or a wider V).
            query = node.inputs[0].producer() if node.inputs[0] is not None else None
            weight = node.inputs[1].const_value if node.op_type == "Attention" else None
            if node.op_type == "MultiHeadAttention" and query is not None and query.op_type == "MatMul":
                weight = query.inputs[1].const_value
            if weight is not None and len(weight.shape) == 2:
                hidden = weight.shape[0]
            return node.attributes.get_int("num_heads", 0), hidden
    return 0, 0


def fuse_file(
    input_path: str | Path,
    output_path: str | Path,
    info: ModelInfo,
    *,
    disabled: Iterable[str] = (),
    input_int32: bool = False,
    target: str = "cpu",
    validate: bool = True,
    progress: Callable[[str], None] = lambda message: None,
    extra_rules: Iterable[FusionRules] = (),
    expected: dict[str, int] | None = None,
    cpu_layer_norm: bool = False,
) -> FuseResult:
    """Load, fuse, validate and atomically save; the input file is never modified.

    With ``validate`` (the default) the output is written only once it loads in ONNX
    Runtime and computes what the input computes (:mod:`tfopt.graph.validate`); a rule
    that broke it is found, left out and listed in ``dropped_rules``.
    ``extra_rules``, ``expected`` and ``cpu_layer_norm``: as in :func:`fuse_model` (``info.rules`` and
    ``info.expected`` are used too, so an adapter that states them needs no own ``fuse``).
    """
    extra_rules = list(extra_rules)

    def build(skip: frozenset[str]):
        model = load_model(input_path)
        stats = fuse_model(
            model, info, disabled=disabled, input_int32=input_int32, target=target, skip_rules=skip,
            extra_rules=extra_rules, expected=expected, cpu_layer_norm=cpu_layer_norm,
        )
        return model, stats, fired_rules(stats)

    reference = Reference(input_path, axis_sizes=info.axis_sizes)  # named axes sized as the adapter says
    outcome = write_validated(build, output_path, reference, refuse=input_path, validate=validate, progress=progress)
    stats = outcome.built
    return FuseResult(
        model_path=Path(output_path),
        op_counts=stats.op_counts,
        rule_counts=stats.rule_counts,
        expected=stats.expected,
        missing=stats.missing,
        leftover=stats.leftover,
        seconds=stats.seconds,
        validation=outcome.validation,
        dropped_rules=outcome.dropped,
    )


def fired_rules(stats: FusionStats) -> list[str]:
    """Names of the rules that changed the graph, in the order they ran."""
    return [name for name, count in stats.rule_counts.items() if count]
