"""Every model tfopt writes is validated: it loads in ONNX Runtime and computes what its input computes.

A rule that breaks a model is injected on purpose (a Gelu rewritten as Relu: loads, wrong
numbers; a Gelu given a second input: ONNX Runtime refuses it) and must be found, left out and
reported, with the rest of the fusions kept; the written model is then checked here
independently of tfopt's own validation code.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnxscript.rewriter import pattern

from tfopt.cli import main
from tfopt.errors import TfoptError
from tfopt.feeds import dummy_feeds, session_feed
from tfopt.graph import fuse_file
from tfopt.graph import fusion as fusion_module
from tfopt.graph.validate import (
    INT8_MIN_COSINE,
    Reference,
    ValidationFailed,
    compare_outputs,
    validate_written,
    validation_feeds,
    validation_line,
)
from tfopt.optimizer import optimize_model
from tfopt.report import warnings_for
from tfopt.results import ModelInfo
from tfopt_host_models import LAYERS


def _max_diff(reference_path, candidate_path) -> float:
    """Worst abs difference on valid positions over three padded shapes (independent of tfopt.graph.validate)."""
    reference, candidate = ort.InferenceSession(str(reference_path)), ort.InferenceSession(str(candidate_path))
    worst = 0.0
    for feed in dummy_feeds(reference_path, batch_sizes=(1, 3), sequence_lengths=(5, 8)):
        expected = reference.run(None, session_feed(reference, feed))[0]
        actual = candidate.run(None, session_feed(candidate, feed))[0]
        worst = max(worst, float(np.abs(actual - expected)[feed["attention_mask"].astype(bool)].max()))
    return worst


class GeluAsRelu(pattern.RewriteRuleClassBase):
    """A broken rule: the graph still loads, but computes something else."""

    def pattern(self, op, x):
        return op.Gelu(x, _domain="com.microsoft")

    def rewrite(self, op, x, **_):
        return op.Relu(x)


class GeluWithTwoInputs(pattern.RewriteRuleClassBase):
    """A broken rule: the contrib op gets an input its schema does not have; ONNX Runtime refuses the model."""

    def pattern(self, op, x):
        return op.Gelu(x, _domain="com.microsoft")

    def rewrite(self, op, x, **_):
        return op.Gelu(x, x, _domain="com.microsoft")


@pytest.fixture
def broken_rule(monkeypatch):
    """Run a rule right after the Gelu fusion (installed by calling the fixture's result)."""
    real_plan = fusion_module._rule_plan

    def install(rule_class):
        def plan(info, target, *args):
            steps = real_plan(info, target, *args)
            after = next(i for i, (name, _) in enumerate(steps) if name == "gelu") + 1
            return steps[:after] + [("gelu", [rule_class.rule()])] + steps[after:]

        monkeypatch.setattr(fusion_module, "_rule_plan", plan)
        return rule_class.__name__

    return install


def test_fused_model_is_validated_before_it_is_written(tiny_bert, tmp_path):
    result = fuse_file(tiny_bert, tmp_path / "out.onnx", ModelInfo("bert"))
    assert result.validation.passed and result.validation.feeds == 2 and result.validation.max_diff < 1e-5
    assert result.dropped_rules == [] and result.op_counts["MultiHeadAttention"] == LAYERS
    assert _max_diff(tiny_bert, tmp_path / "out.onnx") < 1e-4


@pytest.mark.parametrize("rule_class, problem", [(GeluAsRelu, "differs from the input model's"), (GeluWithTwoInputs, "ONNX Runtime cannot load it")])
def test_a_rule_that_breaks_the_model_is_found_and_left_out(tiny_bert, tmp_path, broken_rule, rule_class, problem):
    name = broken_rule(rule_class)
    result = fuse_file(tiny_bert, tmp_path / "out.onnx", ModelInfo("bert"))
    assert [dropped.rule for dropped in result.dropped_rules] == [name]
    assert problem in result.dropped_rules[0].problem
    assert result.rule_counts[name] == 0 and result.validation.passed
    # Every other fusion still happened, and the written model computes what the input does.
    assert result.op_counts["MultiHeadAttention"] == LAYERS and result.op_counts["SkipLayerNormalization"] == 2 * LAYERS
    assert result.op_counts.get("Relu", 0) == 0 and result.op_counts["BiasGelu"] == LAYERS
    assert _max_diff(tiny_bert, tmp_path / "out.onnx") < 1e-4
    warning = warnings_for({"fuse": result})[0]
    assert warning.startswith(f"fusion rule {name} was left out: with it, ") and problem in warning


def test_without_validation_the_broken_rule_is_written(tiny_bert, tmp_path, broken_rule):
    """The control for the test above: the injected rule really does break the model."""
    broken_rule(GeluAsRelu)
    result = fuse_file(tiny_bert, tmp_path / "out.onnx", ModelInfo("bert"), validate=False)
    assert result.validation is None and result.op_counts["Relu"] == LAYERS
    assert _max_diff(tiny_bert, tmp_path / "out.onnx") > 1e-3


def test_a_model_no_rule_can_fix_is_an_error_and_nothing_is_written(tiny_bert, tmp_path, monkeypatch):
    real_cleanup = fusion_module.cleanup

    def cleanup_that_negates_the_output(model):
        notes = real_cleanup(model)
        import onnx_ir as ir

        output = model.graph.outputs[0]
        negate = ir.node("Neg", [output], name="broken")
        model.graph.append(negate)
        negate.outputs[0].name, negate.outputs[0].dtype, negate.outputs[0].shape = "negated", output.dtype, output.shape
        model.graph.outputs[0] = negate.outputs[0]
        negate.outputs[0].name = output.name
        output.name = "before_negation"
        return notes

    monkeypatch.setattr(fusion_module, "cleanup", cleanup_that_negates_the_output)
    with pytest.raises(ValidationFailed, match="fails validation even with no fusion rule applied .*nothing written"):
        fuse_file(tiny_bert, tmp_path / "out.onnx", ModelInfo("bert"))
    assert list(tmp_path.iterdir()) == []  # no model, no .data, no scratch or temp dirs


def test_an_input_onnx_runtime_cannot_load_is_a_one_line_error(tmp_path):
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])
    graph = oh.make_graph([oh.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")], "g", [x], [y])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "in.onnx")
    with pytest.raises(TfoptError, match="the input does not load in ONNX Runtime .* pass --no-validate") as raised:
        fuse_file(tmp_path / "in.onnx", tmp_path / "out.onnx", ModelInfo("bert"))
    assert "\n" not in str(raised.value) and not (tmp_path / "out.onnx").exists()
    fuse_file(tmp_path / "in.onnx", tmp_path / "out.onnx", ModelInfo("bert"), validate=False)
    assert (tmp_path / "out.onnx").is_file()


@pytest.mark.parametrize(
    "reference, actual, precision, passes",
    [
        ([1.0, 2.0, np.nan], [1.0, 2.0, np.nan], "fp32", True),  # NaN where the input has NaN
        ([1.0, 2.0, 3.0], [1.0, np.nan, 3.0], "fp32", False),  # a new NaN
        ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "fp32", False),  # a NaN turned into a number
        ([1.0, -np.inf], [1.0, -np.inf], "fp32", True),
        ([1.0, -np.inf], [1.0, np.inf], "fp32", False),  # the wrong infinity
        ([1000.0, 1.0], [1000.05, 1.0], "fp32", True),  # 5e-5 of the output's scale
        ([1000.0, 1.0], [1000.5, 1.0], "fp32", False),  # 5e-4 of it
        ([0.5, 0.25], [0.5 + 2e-4, 0.25], "fp32", False),  # below scale 1 the bound is absolute
        ([1.0, 2.0], [1.02, 2.0], "fp16", True),
        ([1.0, 2.0], [1.1, 2.0], "fp16", False),
        ([1.0, 2.0, 3.0], [1.1, 1.9, 3.05], "int8", True),  # same direction
        ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], "int8", False),  # cosine 0.71
    ],
)
def test_compare_outputs(reference, actual, precision, passes):
    score, problem = compare_outputs(np.array(reference), np.array(actual), None, precision)
    assert (problem is None) == passes, problem


def test_int8_bound_is_cosine():
    reference = np.random.default_rng(0).standard_normal(1000)
    noisy = reference + 0.05 * np.random.default_rng(1).standard_normal(1000)
    score, problem = compare_outputs(reference, noisy, None, "int8")
    assert problem is None and 0 < score < 1 - INT8_MIN_COSINE


def test_padded_positions_are_not_compared(tmp_path):
    reference = np.ones((2, 3, 4))
    actual = reference.copy()
    actual[1, 2] = 50.0  # a padded position of row 1
    valid = np.array([[1, 1, 1], [1, 1, 0]], dtype=bool)[..., None]
    assert compare_outputs(reference, actual, valid, "fp32")[1] is None
    assert compare_outputs(reference, actual, None, "fp32")[1] is not None


def test_decoder_feeds_give_past_and_total_lengths_that_add_up(tmp_path):
    """Symbolic dims: the mask spans past + sequence, as GPT-2 with past needs."""
    inputs = [
        oh.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"]),
        oh.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, ["batch", "total_sequence"]),
        oh.make_tensor_value_info("past_key_values.0.key", onnx.TensorProto.FLOAT, ["batch", 2, "past_sequence", 4]),
        oh.make_tensor_value_info("other_mask", onnx.TensorProto.INT64, ["batch", "past_sequence + sequence"]),
        # ONNX Runtime's own GPT-2 format: stacked past, the batch on axis 1
        oh.make_tensor_value_info("past_0", onnx.TensorProto.FLOAT, [2, "batch", 2, "past_sequence", 4]),
    ]
    output = oh.make_tensor_value_info("y", onnx.TensorProto.INT64, ["batch", "sequence"])
    graph = oh.make_graph([oh.make_node("Identity", ["input_ids"], ["y"])], "g", inputs, [output])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), tmp_path / "m.onnx")
    flat, symbolic, *by_structure = validation_feeds(tmp_path / "m.onnx")  # the first two: by name
    for feed in symbolic:
        batch, sequence = feed["input_ids"].shape
        past = feed["past_key_values.0.key"].shape[2]
        assert past != sequence and feed["attention_mask"].shape == (batch, past + sequence)
        assert feed["other_mask"].shape == (batch, past + sequence)
        assert feed["past_0"].shape == (2, batch, 2, past, 4)
    assert all(len({v.shape[1] for k, v in feed.items() if v.ndim == 2}) == 1 for feed in flat)
    assert all(feed["past_0"].shape[1] == feed["input_ids"].shape[0] for feed in flat)


def test_cli_optimize_reports_a_left_out_rule_and_writes_a_valid_model(tiny_bert, tmp_path, broken_rule):
    name = broken_rule(GeluAsRelu)
    result = CliRunner().invoke(main, ["optimize", "--input", str(tiny_bert), "--output", str(tmp_path / "out.onnx")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"tfopt: warning: fusion rule {name} was left out: with it, output 'last_hidden_state' differs" in result.stderr
    assert "tfopt: validated: loads in ONNX Runtime and matches the input on 2 generated inputs" in result.stderr
    assert _max_diff(tiny_bert, tmp_path / "out.onnx") < 1e-4


def test_optimize_model_api_validates_fp16_and_rebuilds_without_the_broken_rule(tiny_bert, tmp_path, broken_rule):
    name = broken_rule(GeluAsRelu)
    optimized = optimize_model(tiny_bert)
    optimized.convert_float_to_float16()
    optimized.save_model_to_file(tmp_path / "fp16.onnx")
    assert [d.rule for d in optimized.dropped_rules] == [name] and optimized.validation.precision == "fp16"
    assert optimized.get_fused_operator_statistics()["BiasGelu"] == LAYERS  # the statistics are the written model's
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in onnx.load(tmp_path / "fp16.onnx").graph.initializer)
    assert _max_diff(tiny_bert, tmp_path / "fp16.onnx") < 2e-2


def test_an_edited_proto_that_fails_is_not_written(tiny_bert, tmp_path):
    optimized = optimize_model(tiny_bert)
    graph = optimized.model.graph  # handed out: tfopt cannot rebuild the caller's edits
    skip = next(node for node in graph.node if node.op_type == "SkipLayerNormalization")
    skip.op_type = "BiasGelu"  # a node ONNX Runtime will refuse
    with pytest.raises(ValidationFailed, match="ONNX Runtime cannot load it"):
        optimized.save_model_to_file(tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_output_may_not_be_any_file_of_the_input(tiny_bert, tmp_path):
    model = onnx.load(tiny_bert)
    onnx.save(model, tmp_path / "in.onnx", save_as_external_data=True, location="shared.onnx.data", size_threshold=0)
    data_before = (tmp_path / "shared.onnx.data").read_bytes()
    for output in ("shared.onnx.data", "shared.onnx"):  # the data file itself, or a model whose data would land on it
        result = CliRunner().invoke(main, ["optimize", "--input", str(tmp_path / "in.onnx"), "--output", str(tmp_path / output)])
        assert result.exit_code == 2 and "is part of the input model" in result.stderr, result.output
        assert (tmp_path / "shared.onnx.data").read_bytes() == data_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "shared.onnx.data"]


def test_validate_written_removes_a_converted_model_that_fails(tiny_bert, tmp_path):
    """A converter's output (fp16, int8) that differs from its input is deleted, never left for a user to load."""
    fuse_file(tiny_bert, tmp_path / "fused.onnx", ModelInfo("bert"))
    broken = onnx.load(tmp_path / "fused.onnx")
    embed = next(node for node in broken.graph.node if node.op_type == "EmbedLayerNormalization")
    next(attr for attr in embed.attribute if attr.name == "epsilon").f = 10.0  # normalises every embedding to ~0
    onnx.save(broken, tmp_path / "fused.fp16.onnx", save_as_external_data=True, location="fused.fp16.onnx.data", size_threshold=0)
    with pytest.raises(ValidationFailed, match="fused.fp16.onnx: the fp16 model failed validation .* it was removed"):
        validate_written(tmp_path / "fused.fp16.onnx", tmp_path / "fused.onnx", "fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused.onnx"]
    assert Reference(tmp_path / "fused.onnx").validate(tmp_path / "fused.onnx").passed


def test_a_half_precision_input_is_held_to_the_fp16_bound_and_its_reference_runs_unoptimized(tmp_path):
    """torch's fp16 LayerNorm form: ONNX Runtime's own LayerNorm fusion refuses it at load
    ("bound to different types"), and fusing it into fp16 LayerNormalization moves fp16 rounding."""
    from test_graph_forms import encoder

    original = encoder(ln="cast_fp32", dtype=np.float16)
    onnx.save(original, tmp_path / "in.onnx")
    result = fuse_file(tmp_path / "in.onnx", tmp_path / "out.onnx", ModelInfo("bert"))
    assert result.validation.passed and result.validation.precision == "fp16" and result.dropped_rules == []
    assert result.op_counts["SkipLayerNormalization"] == 2 * LAYERS and result.op_counts["EmbedLayerNormalization"] == 1


def _cache_graph(path, *, cache: str = "past_key_values.0.key", position_rows: int = 5) -> None:
    """A decoder step as torch's dynamo exporter declares it: every input has symbols of its own.

    The graph ties them only by what it computes: the past key is concatenated with new keys
    along axis -2, and that concatenation (past + sequence) is multiplied against the mask, so
    the mask must be past + sequence long; position ids index a table of ``position_rows`` rows.
    """
    from onnx import numpy_helper

    float_, int_ = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    inputs = [
        oh.make_tensor_value_info("input_ids", int_, ["s33", "s41"]),
        oh.make_tensor_value_info("attention_mask", int_, ["s6", "s50"]),
        oh.make_tensor_value_info("position_ids", int_, ["s2", "s9"]),
        oh.make_tensor_value_info(cache, float_, ["s12", 2, "s40", 4]),
    ]
    rng = np.random.default_rng(0)
    tables = [
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "wte"),
        numpy_helper.from_array(rng.standard_normal((position_rows, 8)).astype(np.float32), "wpe"),
        numpy_helper.from_array(np.array([0, 0, 2, 4]), "heads"),
        numpy_helper.from_array(np.array([-1]), "last"),
        numpy_helper.from_array(np.array([1]), "one"),
    ]
    nodes = [
        oh.make_node("Gather", ["wte", "input_ids"], ["tokens"]),
        oh.make_node("Gather", ["wpe", "position_ids"], ["positions"]),
        oh.make_node("Add", ["tokens", "positions"], ["hidden"]),  # [B, S, 8]
        oh.make_node("Reshape", ["hidden", "heads"], ["split"]),  # [B, S, 2, 4]
        oh.make_node("Transpose", ["split"], ["key"], perm=[0, 2, 1, 3]),  # [B, 2, S, 4]
        oh.make_node("Concat", [cache, "key"], ["present"], axis=-2),  # [B, 2, P+S, 4]
        oh.make_node("ReduceSum", ["present", "last"], ["scores"], keepdims=0),  # [B, 2, P+S]
        oh.make_node("Cast", ["attention_mask"], ["mask"], to=float_),
        oh.make_node("Unsqueeze", ["mask", "one"], ["mask3"]),  # [B, 1, T]
        oh.make_node("Mul", ["scores", "mask3"], ["y"]),  # T must be P+S
    ]
    output = oh.make_tensor_value_info("y", float_, None)
    graph = oh.make_graph(nodes, "cache", inputs, [output], initializer=tables)
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("cache", ["past_key_values.0.key", "state"])  # found by its name and rank, or by the Concat alone
def test_feeds_fit_a_cache_whose_axes_only_the_graph_ties(tmp_path, cache):
    """Today's dynamo export of a decoder: the names tie no axis; the Concat and the Mul do."""
    _cache_graph(tmp_path / "m.onnx", cache=cache)
    sets = validation_feeds(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    runs = []
    for feeds in sets:
        try:
            runs.append([session.run(None, feed) for feed in feeds])
        except Exception:
            runs.append(None)
    fitting = [feeds for feeds, ran in zip(sets, runs) if ran is not None]
    assert fitting, "no generated feed set fits the graph"
    for feed in fitting[0]:
        batch, sequence = feed["input_ids"].shape
        past = feed[cache].shape[2]
        assert feed["attention_mask"].shape == (batch, past + sequence) and past != sequence
        assert feed["position_ids"].max() < 5  # inside the 5-row table
    validation = Reference(tmp_path / "m.onnx").validate(tmp_path / "m.onnx")
    assert validation.passed and validation.feeds == 2 and not validation.notes


def _ill_conditioned(path, *, rescaled: bool = False, beta_shift: float = 0.0) -> None:
    """LayerNorm over features an all-ones MatMul makes identical (ONNX Runtime's GPT-2 test graphs):
    x - mean is rounding noise, amplified by 1/sqrt(epsilon). ``rescaled`` computes the same function
    as x @ (W * c) / c with a scale c per column (what folding a constant into weights does): only
    the rounding differs. ``beta_shift`` makes it wrong."""
    from onnx import numpy_helper

    hidden, float_ = 64, onnx.TensorProto.FLOAT
    scale = (1 + np.arange(hidden) / hidden).astype(np.float32)
    weight = np.ones((hidden, hidden), np.float32) * (scale if rescaled else 1)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.ones(hidden, np.float32), "gamma"),
        numpy_helper.from_array(np.ones(hidden, np.float32) + np.float32(beta_shift), "beta"),
        numpy_helper.from_array(scale, "scale"),
    ]
    nodes = [oh.make_node("MatMul", ["x", "w"], ["scaled" if rescaled else "h"])]
    if rescaled:
        nodes.append(oh.make_node("Div", ["scaled", "scale"], ["h"]))
    nodes.append(oh.make_node("LayerNormalization", ["h", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-3))
    x = oh.make_tensor_value_info("x", float_, ["batch", "sequence", hidden])
    y = oh.make_tensor_value_info("y", float_, ["batch", "sequence", hidden])
    onnx.save(oh.make_model(oh.make_graph(nodes, "fragile", [x], [y], initializer=inits), opset_imports=[oh.make_opsetid("", 18)]), path)


def test_an_ill_conditioned_input_is_judged_against_its_own_rounding_noise(tmp_path):
    _ill_conditioned(tmp_path / "in.onnx")
    _ill_conditioned(tmp_path / "same.onnx", rescaled=True)
    _ill_conditioned(tmp_path / "wrong.onnx", rescaled=True, beta_shift=5e-3)
    reference = Reference(tmp_path / "in.onnx")
    same = reference.validate(tmp_path / "same.onnx")
    assert same.passed and same.feeds == 2 and same.max_diff > 1e-4  # beyond the plain fp32 bound
    assert "ill-conditioned" in same.notes[0] and "when its float weights move by one ulp" in same.notes[0]
    assert "ill-conditioned" in validation_line(same)
    wrong = reference.validate(tmp_path / "wrong.onnx")  # a wrong rewrite of the same graph is still refused
    assert not wrong.passed and "even 8x the input's own rounding noise" in wrong.problem


def test_a_normal_model_is_held_to_the_plain_bound(tiny_bert, tmp_path):
    """A subtly wrong model (one output column shifted by 3e-4 of the scale) of a well-conditioned input: refused."""
    from onnx import numpy_helper

    model = onnx.load(tiny_bert)
    output = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [output + "_raw" if name == output else name for name in node.output]
    scale = float(np.abs(Reference(tiny_bert)._load()[2][0][output]).max())
    shift = np.zeros(model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value, np.float32)
    shift[5] = 3e-4 * max(1.0, scale)
    model.graph.initializer.append(numpy_helper.from_array(shift, "shift"))
    model.graph.node.append(oh.make_node("Add", [output + "_raw", "shift"], [output]))
    onnx.save(model, tmp_path / "shifted.onnx")
    result = Reference(tiny_bert).validate(tmp_path / "shifted.onnx")
    assert not result.passed and "differs from the input model's" in result.problem and "noise" not in result.problem


def _norm_model(path, *, form: str, opset: int, external: bool = False) -> None:
    """RMSNorm or LayerNorm over 16 features: ``decomposed`` (standard ops), or one node as ONNX
    Runtime registers it in the default domain (``simplified``: SimplifiedLayerNormalization;
    ``layernorm``: LayerNormalization, below opset 17 unknown to onnx). ``unknown``: an op no one
    registers; ``dangling``: SimplifiedLayerNormalization reading a value nothing defines."""
    from onnx import numpy_helper

    float_ = onnx.TensorProto.FLOAT
    weights = [
        numpy_helper.from_array(np.linspace(0.5, 1.5, 16).astype(np.float32), "gamma"),
        numpy_helper.from_array(np.linspace(-0.1, 0.1, 16).astype(np.float32), "beta"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
    ]
    rms = form in ("simplified", "unknown", "dangling", "decomposed-rms")
    if form.startswith("decomposed"):
        nodes = [oh.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]), oh.make_node("Sub", ["x", "mean"], ["centered"])] if not rms else []
        centered = "x" if rms else "centered"
        nodes += [
            oh.make_node("Pow", [centered, "two"], ["squared"]),
            oh.make_node("ReduceMean", ["squared"], ["variance"], axes=[-1]),
            oh.make_node("Add", ["variance", "eps"], ["shifted"]),
            oh.make_node("Sqrt", ["shifted"], ["deviation"]),
            oh.make_node("Div", [centered, "deviation"], ["normed"]),
            oh.make_node("Mul", ["normed", "gamma"], ["scaled" if not rms else "y"]),
        ]
        if not rms:
            nodes.append(oh.make_node("Add", ["scaled", "beta"], ["y"]))
    else:
        op, inputs = {"simplified": ("SimplifiedLayerNormalization", ["x", "gamma"]), "layernorm": ("LayerNormalization", ["x", "gamma", "beta"]),
                      "unknown": ("NoSuchNormalization", ["x", "gamma"]), "dangling": ("SimplifiedLayerNormalization", ["x", "nowhere"])}[form]
        nodes = [oh.make_node(op, inputs, ["y"], axis=-1, epsilon=1e-5)]
    x = oh.make_tensor_value_info("x", float_, ["batch", "sequence", 16])
    y = oh.make_tensor_value_info("y", float_, ["batch", "sequence", 16])
    model = oh.make_model(oh.make_graph(nodes, "norm", [x], [y], initializer=weights), opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    if external:
        onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, path)


@pytest.mark.parametrize(
    "reference_form, candidate_form, opset",
    [("decomposed-rms", "simplified", 17), ("decomposed", "layernorm", 14)],
)
@pytest.mark.parametrize("external", [False, True])
def test_default_domain_ops_onnx_runtime_registers_are_valid(tmp_path, reference_form, candidate_form, opset, external):
    """onnx.checker: "No Op registered for SimplifiedLayerNormalization" (and LayerNormalization
    below opset 17); ONNX Runtime registers both in the default domain and runs them: its schemas judge."""
    _norm_model(tmp_path / "in.onnx", form=reference_form, opset=opset)
    (tmp_path / "out").mkdir()
    _norm_model(tmp_path / "out" / "fused.onnx", form=candidate_form, opset=opset, external=external)
    with pytest.raises(onnx.checker.ValidationError, match="No Op registered for"):
        onnx.checker.check_model(str(tmp_path / "out" / "fused.onnx"))
    validation = Reference(tmp_path / "in.onnx").validate(tmp_path / "out" / "fused.onnx")
    assert validation.passed and validation.feeds == 2, validation.problem


@pytest.mark.parametrize(
    "form, problem",
    [("unknown", "No Op registered for NoSuchNormalization"), ("dangling", "nowhere")],
)
def test_the_checker_still_judges_ops_no_one_registers_and_the_structure(tmp_path, form, problem):
    _norm_model(tmp_path / "in.onnx", form="decomposed-rms", opset=17)
    _norm_model(tmp_path / "bad.onnx", form=form, opset=17)
    validation = Reference(tmp_path / "in.onnx").validate(tmp_path / "bad.onnx")
    assert not validation.passed and validation.problem.startswith("the ONNX checker rejects it") and problem in validation.problem


def test_onnx_runtime_schemas_are_read_once():
    from tfopt.graph.ort_schemas import ort_registers, ort_schema_versions

    assert ort_registers("SimplifiedLayerNormalization", "", 1) and ort_registers("LayerNormalization", "ai.onnx", 14)
    assert ort_registers("MultiHeadAttention", "com.microsoft", 1) and ort_registers("NoSuchOp", "", 17) is False
    assert ort_registers("RMSNormalization", "", 22) is False and ort_registers("RMSNormalization", "", 23)
    assert ort_schema_versions() is ort_schema_versions()
