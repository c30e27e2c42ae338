"""GPT-2 as transformers 4.x + ONNX Runtime's convert_to_onnx wrote it: fully fused, same numbers, same tokens.

That graph has one stacked ``past_i`` per layer, the causal mask sliced from a constant
tril buffer and applied with ``Where``, and Conv1D as ``Gemm`` between dynamic reshapes
(see ``gpt2_v4_forms``). The other half: masks that are not the causal one (``Less`` for
``LessOrEqual`` in today's export, a strict tril, a slice that ignores the past) must
not become ``MultiHeadAttention(unidirectional=1)``, and the graph must stay right.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from transformers import GPT2Config

from gpt2_v4_forms import V4Gpt2, export_v4, greedy_v4, v4_feed, v4_names
from tfopt.bench import ort_session
from tfopt.graph.fusion import fuse_model
from tfopt.graph.io import load_model, save_model
from tfopt.graph.passes import prepare
from tfopt.graph.rules import attention as attention_rules
from tfopt.graph.rules.causal_mask import causal_mask_problem
from tfopt.graph.rules.decoder_forms import decoder_form_rules
from tfopt.graph.values import constant_array
from tfopt_gpt2.cache import source_model
from tfopt_gpt2.decoder import run_torch
from tfopt_gpt2.generate import example_prompts, greedy_generate_torch
from tfopt_gpt2.inputs import StepShape, feeds_for_shapes
from tfopt_gpt2.models import describe, random_model
from onnxscript.optimizer import remove_unused_nodes
from onnxscript.rewriter.pattern import RewriteRuleSet

LAYERS, HEADS, HIDDEN = 2, 4, 48
CONFIG = dict(n_positions=64, n_head=HEADS, n_embd=HIDDEN, n_layer=LAYERS, vocab_size=120, initializer_range=0.2)
# Gpt2Helper.export_onnx's own choices (opset 11; 14 with external data; int32 IO), and
# an opset-17 variant with int64 ids, a float mask and the past unstacked by Gather.
FORMS = {
    "opset11": dict(opset=11),
    "opset14": dict(opset=14),
    "opset17-float-mask-gather": dict(opset=17, int_dtype=torch.int64, mask_dtype=torch.float32, unstack="index"),
}
# First steps (past 0), decode steps, both at once; rows left-padded by different amounts.
SHAPES = [StepShape(1, 0, 1), StepShape(1, 0, 8), StepShape(4, 0, 6), StepShape(3, 5, 4), StepShape(8, 16, 1), StepShape(2, 7, 3)]
TOLERANCE = 1e-4


def _numpy(dtype: torch.dtype):
    return torch.empty((), dtype=dtype).numpy().dtype


def _dtypes(form: dict) -> dict:
    return dict(int_dtype=_numpy(form.get("int_dtype", torch.int32)), mask_dtype=_numpy(form.get("mask_dtype", torch.int32)))


@pytest.fixture(scope="module")
def source():
    return describe(random_model(GPT2Config(**CONFIG)), "v4-tiny")


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory):
    """(form name, causal form) -> path of the convert_to_onnx-style export, made once."""
    done = {}

    def get(form: str, causal: str = "tril"):
        key = (form, causal)
        if key not in done:
            options = dict(FORMS[form])
            module = V4Gpt2(source.model, causal, unstack=options.pop("unstack", "unbind"))
            path = tmp_path_factory.mktemp(f"v4-{form}-{causal}") / "model.onnx"
            export_v4(module, path, num_layers=LAYERS, num_heads=HEADS, head_size=HIDDEN // HEADS, **options)
            done[key] = path
        return done[key]

    return get


@pytest.fixture(scope="module")
def fused(exported):
    """(form name, causal form) -> (fused path, FusionStats): tfopt's fusion alone (no validation step), once."""
    done = {}

    def get(form: str, causal: str = "tril"):
        key = (form, causal)
        if key not in done:
            path = exported(form, causal)
            model = load_model(path)
            stats = fuse_model(model, source_info())
            output = path.with_name("fused.onnx")
            save_model(model, output)
            done[key] = (output, stats)
        return done[key]

    return get


def source_info():
    from tfopt.results import ModelInfo

    return ModelInfo(model_type="gpt2", num_heads=HEADS, hidden_size=HIDDEN, num_layers=LAYERS)


def _max_diff(candidate_path, reference_path, feeds) -> float:
    """Max |candidate - reference| over every output, at valid (unpadded) positions only."""
    candidate, reference = ort_session(candidate_path), ort_session(reference_path)
    names = [o.name for o in reference.get_outputs()]
    worst = 0.0
    for feed in feeds:
        mask = feed["attention_mask"].astype(bool)
        new = mask[:, -feed["input_ids"].shape[1] :]
        for name, got, want in zip(names, candidate.run(names, feed), reference.run(names, feed)):
            assert got.shape == want.shape, name
            if got.ndim == 3:  # logits (B, S, V): rows of real tokens
                diff = np.abs(got - want)[new]
            elif got.ndim == 5:  # stacked present (2, B, N, T, H): real keys
                diff = np.abs(got - want).transpose(1, 3, 0, 2, 4)[mask]
            else:  # flat present (B, N, T, H)
                diff = np.abs(got - want).transpose(0, 2, 1, 3)[mask]
            assert np.isfinite(diff).all(), name
            worst = max(worst, float(diff.max(initial=0.0)))
    return worst


def _count(stats, *ops) -> int:
    return sum(stats.op_counts.get(op, 0) for op in ops)


def _v4_feeds(source, form: str, shapes=SHAPES, seed: int = 0, **kwargs):
    return [v4_feed(f, LAYERS, **_dtypes(FORMS[form])) for f in feeds_for_shapes(source, shapes, seed=seed, **kwargs)]


def test_the_rebuilt_model_is_transformers_gpt2(source, exported):
    """The reference itself: the 4.x-style module in torch and its export on ORT compute transformers 5's GPT-2."""
    module = V4Gpt2(source.model).eval()
    session = ort_session(exported("opset11"))
    for shape, flat in zip(SHAPES, feeds_for_shapes(source, SHAPES, seed=4)):
        expected = run_torch(source, flat)
        feed = v4_feed(flat, LAYERS)
        with torch.inference_mode():
            rebuilt = module(*(torch.from_numpy(feed[name]) for name in v4_names(LAYERS)[0]))
        on_ort = session.run(None, feed)
        valid = flat["attention_mask"][:, -shape.sequence_length :].astype(bool)
        for logits in (rebuilt[0].numpy(), on_ort[0]):
            assert np.abs(logits - expected["logits"])[valid].max() < TOLERANCE
        stacked = np.stack([expected["present.0.key"], expected["present.0.value"]])
        np.testing.assert_allclose(on_ort[1], stacked, atol=TOLERANCE)


@pytest.mark.parametrize("form", FORMS)
def test_every_layer_fuses(fused, form):
    _, stats = fused(form)
    assert _count(stats, "MultiHeadAttention") == LAYERS, stats.op_counts
    assert _count(stats, "SkipLayerNormalization") == 2 * LAYERS, stats.op_counts
    assert _count(stats, "EmbedLayerNormalization") == 1, stats.op_counts  # layer 0's ln_1, emitting the sum too
    assert _count(stats, "FastGelu") == LAYERS, stats.op_counts
    assert _count(stats, "Softmax", "Where", "LayerNormalization", "Gemm") == 0, stats.op_counts
    assert not stats.missing
    assert stats.rule_counts["WhereMaskedScores"] == LAYERS


@pytest.mark.parametrize("form", FORMS)
def test_fused_model_computes_what_its_input_computes(source, exported, fused, form):
    path = exported(form)
    fused_path, _ = fused(form)
    graph, original = onnx.load(str(fused_path)).graph, onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [i.name for i in original.input]  # stacked past stays
    assert [o.name for o in graph.output] == [o.name for o in original.output]
    attentions = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    assert all(onnx.helper.get_attribute_value(a) == 1 for n in attentions for a in n.attribute if a.name == "unidirectional")
    feeds = _v4_feeds(source, form, seed=1) + _v4_feeds(source, form, seed=2, padded=False)
    assert _max_diff(fused_path, path, feeds) <= TOLERANCE


@pytest.mark.parametrize("form", FORMS)
def test_validation_checks_parity_on_onnx_runtimes_gpt2_layout(exported, fused, form):
    """tfopt's own validation feeds this layout (batch on axis 1 of the stacked past, total = past + sequence)."""
    from tfopt.graph.validate import Reference

    fused_path, _ = fused(form)
    validation = Reference(exported(form)).validate(fused_path)
    assert validation.passed and validation.feeds == 2, validation


def test_fused_model_generates_pytorchs_tokens(source, exported, fused):
    input_ids, attention_mask = example_prompts(source, 4, 9, seed=3)
    expected = greedy_generate_torch(source, input_ids, attention_mask, 12)
    for model in (exported("opset11"), fused("opset11")[0]):
        np.testing.assert_array_equal(greedy_v4(ort_session(model), input_ids, attention_mask, 12, num_layers=LAYERS), expected)


def test_canonical_forms_alone_change_no_number(source, exported, tmp_path):
    """The rewrites that prepare attention are exact on their own (the attention fusion may still refuse)."""
    path = exported("opset11")
    model = load_model(path)
    prepare(model)
    applied = sum(RewriteRuleSet([rule]).apply_to_model(model) for rule in decoder_form_rules())
    remove_unused_nodes(model)
    assert applied == 2 * LAYERS  # one scale and one Where per layer
    wheres = [node for node in model.graph if node.op_type == "Where"]
    assert len(wheres) == LAYERS and all(constant_array(node.inputs[1]) is not None for node in wheres)  # masks, not scores
    save_model(model, tmp_path / "canonical.onnx")
    # float rounding only (ORT picks kernels per graph); a wrong mask or scale moves logits by > 0.1
    assert _max_diff(tmp_path / "canonical.onnx", path, _v4_feeds(source, "opset11", seed=5)) <= 1e-5


@pytest.mark.parametrize("causal", ["strict", "from_zero"])
def test_a_mask_that_is_not_causal_is_not_fused_as_causal(source, exported, fused, causal):
    """A tril without its diagonal, a slice that ignores the past: never a causal attention; fused (since prepare
    folds the slices of known shapes, the cache attention matches) only with the graph's own mask as its bias;
    the rest fuses, numbers hold on shapes with other pasts and lengths."""
    path = exported("opset14", causal)
    fused_path, stats = fused("opset14", causal)
    attentions = [node for node in onnx.load(str(fused_path)).graph.node if node.op_type in ("Attention", "MultiHeadAttention")]
    assert all(node.op_type == "Attention" and node.domain in ("", "ai.onnx") for node in attentions), stats.op_counts
    assert not [a for node in attentions for a in node.attribute if a.name in ("is_causal", "unidirectional") and a.i], stats.op_counts
    assert all(len(node.input) > 3 and node.input[3] for node in attentions)  # the mask, as computed by the graph
    assert _count(stats, "SkipLayerNormalization", "EmbedLayerNormalization") == 2 * LAYERS + 1 and _count(stats, "FastGelu") == LAYERS
    shapes = [StepShape(2, 3, 4), StepShape(1, 6, 1), StepShape(3, 2, 5)]  # past > 0: every query sees a key
    assert _max_diff(fused_path, path, _v4_feeds(source, "opset14", shapes, seed=6, padded=False)) <= TOLERANCE


def _less_than_export(exported_variant, exporter: str, target):
    """Today's export of tiny-gpt2 with its causal ``LessOrEqual`` turned into ``Less`` (a token no longer sees itself)."""
    ctx, result = exported_variant("tiny-gpt2", exporter)
    proto = onnx.load(str(result.model_path))
    comparisons = [node for node in proto.graph.node if node.op_type == "LessOrEqual"]
    assert len(comparisons) == 1
    comparisons[0].op_type = "Less"
    onnx.save(proto, str(target))
    return source_model(ctx), result.info


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_todays_export_with_a_shifted_mask_is_not_fused_as_causal(exported_variant, tmp_path, monkeypatch, exporter):
    """MultiHeadAttention(unidirectional) assumes the mask is causal: refused. ONNX's Attention,
    which applies the graph's own mask as it is, may take it: the numbers then stay the input's."""
    path = tmp_path / "less.onnx"
    gpt2, info = _less_than_export(exported_variant, exporter, path)
    feeds = feeds_for_shapes(gpt2, [StepShape(2, 3, 4), StepShape(1, 5, 1), StepShape(3, 2, 6)], seed=7, padded=False)

    def fuse():
        model = load_model(path)
        stats = fuse_model(model, info)
        save_model(model, tmp_path / "fused.onnx")
        return stats

    stats = fuse()
    assert _count(stats, "MultiHeadAttention") == 0, stats.op_counts
    assert stats.rule_counts.get("CachedAttention", 0) == stats.op_counts.get("Attention", 0)  # only the mask-keeping op
    assert _max_diff(tmp_path / "fused.onnx", path, feeds) <= TOLERANCE
    # Without the mask check the rule fuses it, and the model computes something else.
    monkeypatch.setattr(attention_rules, "causal_mask_problem", lambda *args, **kwargs: None)
    assert _count(fuse(), "MultiHeadAttention") == info.num_layers
    assert _max_diff(tmp_path / "fused.onnx", path, feeds) > 0.1


def _mask_graph(comparison: str, *, padding: bool = True) -> ir.Model:
    """A hand-built additive mask for ``query`` (B, N, S, H) against T = attention_mask's length.

    keep[i, j] = j <comparison> (T - S) + i, and attention_mask[b, j] != 0 when ``padding``.
    """
    h = onnx.helper
    ints = lambda name, values: onnx.numpy_helper.from_array(np.array(values, np.int64), name)  # noqa: E731
    nodes = [
        h.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        h.make_node("Gather", ["mask_shape", "one"], ["total"], axis=0),
        h.make_node("Shape", ["query"], ["query_shape"]),
        h.make_node("Gather", ["query_shape", "two"], ["length"], axis=0),
        h.make_node("Sub", ["total", "length"], ["past"]),
        h.make_node("Range", ["zero", "total", "one"], ["keys"]),
        h.make_node("Range", ["past", "total", "one"], ["queries"]),
        h.make_node("Unsqueeze", ["queries", "last"], ["query_column"]),
        h.make_node(comparison, ["keys", "query_column"], ["causal"]),
        h.make_node("Cast", ["attention_mask"], ["real"], to=onnx.TensorProto.BOOL),
        h.make_node("Unsqueeze", ["real", "middle"], ["real_keys"]),
        h.make_node("And" if padding else "Or", ["causal", "real_keys"] if padding else ["causal", "causal"], ["keep"]),
        h.make_node("Where", ["keep", "zero_f", "minimum"], ["mask"]),
    ]
    initializers = [
        ints("zero", 0), ints("one", 1), ints("two", 2), ints("last", [1]), ints("middle", [1, 2]),
        onnx.numpy_helper.from_array(np.array(0, np.float32), "zero_f"),
        onnx.numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "minimum"),
    ]
    graph = h.make_graph(
        nodes, "mask", [h.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, ["batch", "total"]),
                        h.make_tensor_value_info("query", onnx.TensorProto.FLOAT, ["batch", 4, "sequence", 8])],
        [h.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, None)], initializers,
    )
    return ir.from_proto(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))


@pytest.mark.parametrize(
    "comparison, padding, verdict",
    [
        ("LessOrEqual", True, None),
        ("Less", True, "drops a position a causal mask keeps"),
        ("Greater", True, "drops a position a causal mask keeps"),
        ("LessOrEqual", False, "keeps a position a causal mask drops"),  # ignores the padding
    ],
)
def test_the_mask_check_says_what_is_wrong(comparison, padding, verdict):
    model = _mask_graph(comparison, padding=padding)
    graph = model.graph
    query = next(v for v in graph.inputs if v.name == "query")
    problem = causal_mask_problem(
        graph.outputs[0], model=model, graph=graph, mask_input=graph.inputs[0], known={query: lambda b, p, s: (b, 4, s, 8)}
    )
    if verdict is None:
        assert problem is None
    else:
        assert problem is not None and verdict in problem, problem
