"""The fusion API a plugin author uses: FusionRules groups, stated expectations, missing-fusion lines."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnxscript.rewriter import pattern

from tfopt import hookimpl
from tfopt.errors import TfoptError
from tfopt.graph import (
    MODEL_TYPES,
    FusionRules,
    decoder_counts,
    encoder_counts,
    expected_counts,
    fuse_file,
    fuse_model,
    missing_fusions,
)
from tfopt.results import ExportResult, IOSpec, ModelInfo, to_jsonable


def _toy(path=None) -> onnx.ModelProto:
    """x -> Neg -> Neg -> Softmax -> y: a double negation a family rule removes, and a bare Softmax."""
    nodes = [
        helper.make_node("Neg", ["x"], ["n1"]),
        helper.make_node("Neg", ["n1"], ["n2"]),
        helper.make_node("Softmax", ["n2"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if path is not None:
        onnx.save(model, path)
    return model


def _double_negation(wrong: bool = False) -> pattern.RewriteRule:
    def target(op, x):
        return op.Neg(op.Neg(x))

    def replacement(op, x):
        return op.Neg(x) if wrong else op.Identity(x)

    return pattern.RewriteRule(target, replacement, name="DoubleNegWrong" if wrong else "DoubleNeg")


def _fuse(info: ModelInfo, **kwargs):
    model = ir.serde.deserialize_model(_toy())
    return model, fuse_model(model, info, **kwargs)


def test_builtin_counts_per_layout():
    assert expected_counts(ModelInfo("vit"), 3) == encoder_counts(3, embed_layer_norm=False)
    assert "EmbedLayerNormalization" not in expected_counts(ModelInfo("vit"), 3)
    assert expected_counts(ModelInfo("bert"), 3)["EmbedLayerNormalization"] == 1
    assert expected_counts(ModelInfo("gpt2"), 3)["SkipLayerNormalization"] == 6 == decoder_counts(3)["SkipLayerNormalization"]
    assert decoder_counts(3)["EmbedLayerNormalization"] == 1  # layer 0's ln_1 over the word + position lookups
    assert expected_counts(ModelInfo("some-new-family"), 3) == {}
    assert "vit" in MODEL_TYPES
    stated = {"MyAttention": 3}
    assert expected_counts(ModelInfo("some-new-family", expected=stated), 0) == stated


def test_unknown_model_type_is_a_missing_fusion_not_silence():
    _, stats = _fuse(ModelInfo("some-new-family"))
    assert stats.expected == {}
    assert stats.missing[0].startswith("no expected fusion counts for model type 'some-new-family'")
    assert "vit" in stats.missing[0]
    # whatever the family: a Softmax left over is an attention that did not fuse
    assert stats.missing[1] == "1 Softmax left unfused (an attention pattern did not match)"


def test_leftover_softmax_is_reported_for_a_known_type_too():
    _, stats = _fuse(ModelInfo("vit", num_layers=1))
    assert "1 Softmax left unfused (an attention pattern did not match)" in stats.missing
    assert any(line.startswith("Attention|MultiHeadAttention: expected 1, found 0") for line in stats.missing)


def test_disabling_every_expected_fusion_is_not_a_missing_expectation():
    disabled = ["attention", "skip_layer_norm", "gelu", "embed_layer_norm"]
    _, stats = _fuse(ModelInfo("bert", num_layers=1), disabled=disabled)
    assert stats.expected == {} and stats.missing == []


def test_missing_fusions_lines():
    counts = {"MultiHeadAttention": 1, "Softmax": 2}
    assert missing_fusions({"Attention|MultiHeadAttention": 3}, counts) == [
        "Attention|MultiHeadAttention: expected 3, found 1",
        "2 Softmax left unfused (an attention pattern did not match)",
    ]
    assert missing_fusions({"Attention|MultiHeadAttention": 1}, {"MultiHeadAttention": 1}) == []
    assert missing_fusions({}, counts, disabled=["attention"]) == []


@pytest.mark.parametrize("where", ["extra_rules", "info"])
def test_family_rules_run_are_counted_and_can_be_disabled(where):
    group = FusionRules("double_neg", [_double_negation()], before="layer_norm")
    info = ModelInfo("toy", expected={"Neg": 0, "Softmax": 1}, rules=[group] if where == "info" else [])
    kwargs = {"extra_rules": [group]} if where == "extra_rules" else {}
    model, stats = _fuse(info, **kwargs)
    assert stats.rule_counts["DoubleNeg"] == 1
    assert "Neg" not in stats.op_counts
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], _softmax(x), atol=1e-6)

    _, off = _fuse(info, disabled=["double_neg"], **kwargs)
    assert off.op_counts["Neg"] == 2 and "DoubleNeg" not in off.rule_counts


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_stated_expectation_checks_the_family_op():
    group = FusionRules("double_neg", [_double_negation()])
    _, stats = _fuse(ModelInfo("toy", expected={"Neg": 2, "Softmax": 1}), extra_rules=[group])
    assert stats.missing == ["Neg: expected 2, found 0", "1 Softmax left unfused (an attention pattern did not match)"]


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ("not a group", "extra rules must be tfopt.graph.FusionRules"),
        (FusionRules("x", [], before="nowhere"), "before='nowhere' is no stage"),
        (FusionRules("attention", []), "taken by a shared fusion"),
    ],
)
def test_malformed_groups_are_one_line_errors(group, message):
    with pytest.raises(TfoptError, match=message):
        _fuse(ModelInfo("toy"), extra_rules=[group])


def test_fuse_file_validates_family_rules(tmp_path):
    """A family rule that changes the numbers is found by validation and left out, like a shared one."""
    source = tmp_path / "toy.onnx"
    _toy(source)
    result = fuse_file(
        source, tmp_path / "out.onnx", ModelInfo("toy", expected={"Softmax": 1}),
        extra_rules=[FusionRules("bad", [_double_negation(wrong=True)], before=None)],
    )
    assert [dropped.rule for dropped in result.dropped_rules] == ["DoubleNegWrong"]
    assert result.validation.passed and result.op_counts["Neg"] == 2


def test_rules_stay_out_of_the_report():
    info = ModelInfo("toy", expected={"X": 1}, rules=[FusionRules("double_neg", [_double_negation()])])
    exported = ExportResult(model_path="m.onnx", io=IOSpec(inputs={"x": "float32"}, outputs=["y"]), info=info)
    data = to_jsonable(exported)["info"]
    assert data == {
        "model_type": "toy", "num_heads": 0, "hidden_size": 0, "num_layers": 0, "expected": {"X": 1},
        "axis_sizes": None, "parity_not_checked": None,
    }
    assert ModelInfo(**data) == ModelInfo("toy", expected={"X": 1})


def test_explicit_empty_expectation_is_a_statement():
    _, stats = _fuse(ModelInfo("toy", expected={}))
    assert stats.missing == ["1 Softmax left unfused (an attention pattern did not match)"]


def test_known_type_without_layers_says_why_nothing_is_expected():
    proto = _toy()
    proto.graph.node[2].op_type = "Relu"  # no Softmax: no layer to count
    del proto.graph.node[2].attribute[:]
    stats = fuse_model(ir.serde.deserialize_model(proto), ModelInfo("bert"))
    assert stats.missing == [
        "no expected fusion counts: model type 'bert' with no layers found"
        " (no Softmax in the graph and ModelInfo.num_layers is 0): fusion is unchecked"
    ]


class _MaskCastFirst:
    """An extension: wraps every adapter's export and adds a rule (Unsqueeze before Cast) to its ModelInfo."""

    @staticmethod
    def rule() -> pattern.RewriteRule:
        def target(op, mask, axes):
            return op.Unsqueeze(op.Cast(mask, to=TensorProto.FLOAT), axes)

        def replacement(op, mask, axes):
            return op.Cast(op.Unsqueeze(mask, axes), to=TensorProto.FLOAT)

        return pattern.RewriteRule(target, replacement, name="UnsqueezeFirst")

    @hookimpl(wrapper=True)
    def export(self, ctx):
        exported = yield
        exported.info.rules.append(FusionRules("unsqueeze_first", [self.rule()], before=None))
        return exported


def test_an_extension_adds_a_rule_to_the_default_fuse_by_wrapping_export(fresh_fakes, tmp_path):
    from tfopt.plugins import adapter_names, build_plugin_manager
    from tfopt.testing import check_adapter

    pm = build_plugin_manager(entry_points=[fresh_fakes.entry_point("export_only", fresh_fakes.FAKE_ENTRY_POINTS["export_only"])])
    pm.register(_MaskCastFirst(), name="mask_cast_first")
    assert adapter_names(pm) == ["export_only"]  # a wrapper of export is no adapter
    outcome = check_adapter("export_only", pm=pm, work_dir=tmp_path)
    assert outcome.report["fuse"]["rule_counts"]["UnsqueezeFirst"] == 1
    assert "rules" not in outcome.report["export"]["info"]


def test_a_tracer_sees_why_a_family_rule_did_not_match(capsys):
    from onnxscript.rewriter.pattern import MatchingTracer

    tracer = MatchingTracer()
    group = FusionRules("double_neg", [_double_negation()])
    proto = _toy()
    proto.graph.node[1].op_type = "Relu"  # Neg(Relu(x)): no double negation left to match
    fuse_model(ir.serde.deserialize_model(proto), ModelInfo("toy", expected={}), extra_rules=[group], tracer=tracer)
    tracer.report()
    assert "DoubleNeg" in capsys.readouterr().out


def test_tracing_does_not_change_what_is_fused():
    """onnxscript rewrites nothing while it traces; fuse_model still fuses the whole plan."""
    from onnxscript.rewriter.pattern import MatchingTracer

    group = FusionRules("double_neg", [_double_negation()])
    _, traced = _fuse(ModelInfo("toy", expected={}), extra_rules=[group], tracer=MatchingTracer())
    _, plain = _fuse(ModelInfo("toy", expected={}), extra_rules=[group])
    assert traced.rule_counts == plain.rule_counts and traced.rule_counts["DoubleNeg"] == 1
    assert traced.op_counts == plain.op_counts


def test_default_fuse_takes_disabled_names_as_a_comma_string(tmp_path):
    """`--option disabled=double_neg` reaches the default fuse as a string, not a list of letters."""
    from tfopt import default_plugin
    from tfopt.results import RunContext

    source = tmp_path / "toy.onnx"
    _toy(source)
    info = ModelInfo("toy", expected={}, rules=[FusionRules("double_neg", [_double_negation()])])
    exported = ExportResult(model_path=source, io=IOSpec(inputs={"x": "float32"}, outputs=["y"]), info=info)
    ctx = RunContext(family="toy", source=None, work_dir=tmp_path, options={"disabled": "double_neg"})
    fused = default_plugin.fuse(ctx, exported)
    assert fused.op_counts["Neg"] == 2 and "DoubleNeg" not in fused.rule_counts


class _ForgetsExpectations:
    """Wraps export so the adapter claims a model type nothing is known of, and states no counts."""

    @hookimpl(wrapper=True)
    def export(self, ctx):
        exported = yield
        exported.info = ModelInfo("some-new-family")
        return exported


def test_a_run_warns_when_nothing_is_expected_and_the_kit_fails_it(fresh_fakes, tmp_path):
    from tfopt.plugins import build_plugin_manager
    from tfopt.testing import check_adapter

    pm = build_plugin_manager(entry_points=[fresh_fakes.entry_point("export_only", fresh_fakes.FAKE_ENTRY_POINTS["export_only"])])
    pm.register(_ForgetsExpectations(), name="forgets")
    outcome = check_adapter("export_only", pm=pm, work_dir=tmp_path / "lenient", expect_full_fusion=False)
    assert any("no expected fusion counts for model type 'some-new-family'" in w for w in outcome.report["warnings"])
    with pytest.raises(AssertionError, match="no expected fusion counts for model type 'some-new-family'"):
        check_adapter("export_only", pm=pm, work_dir=tmp_path / "strict")


def test_a_family_group_can_build_its_rules_from_the_runs_model_info():
    """FusionRules(rules=factory): the factory gets the run's ModelInfo (head count, hidden size, layers)."""
    seen = []

    def rules_for(info):
        seen.append((info.model_type, info.num_heads))
        return [_double_negation()] if info.num_heads == 4 else []

    group = FusionRules("double_neg", rules_for)
    _, stats = _fuse(ModelInfo("toy", num_heads=4, hidden_size=8, expected={}), extra_rules=[group])
    assert seen == [("toy", 4)] and stats.rule_counts["DoubleNeg"] == 1
    _, stats = _fuse(ModelInfo("toy", num_heads=2, hidden_size=8, expected={}), extra_rules=[group])
    assert "DoubleNeg" not in stats.rule_counts
    with pytest.raises(TfoptError, match="its rule factory returned NoneType, not a list of rules"):
        _fuse(ModelInfo("toy", expected={}), extra_rules=[FusionRules("broken", lambda info: None)])


def test_validation_also_drops_a_rule_that_fires_in_place_of_a_dropped_one(tmp_path):
    """Two wrong rules for one place: leaving out the first lets the second match; both are found and left out."""
    first, second = _double_negation(wrong=True), _double_negation(wrong=True)
    second.name = "DoubleNegWrongToo"
    source = tmp_path / "toy.onnx"
    _toy(source)
    result = fuse_file(
        source, tmp_path / "out.onnx", ModelInfo("toy", expected={"Softmax": 1}),
        extra_rules=[FusionRules("bad", [first, second], before=None)],
    )
    assert sorted(dropped.rule for dropped in result.dropped_rules) == ["DoubleNegWrong", "DoubleNegWrongToo"]
    assert result.validation.passed and result.op_counts["Neg"] == 2
