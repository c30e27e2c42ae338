"""scripts/ort_suite.py's pure helpers: fused-op families, flags, verdicts, feeds (no ONNX Runtime checkout needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import ort_suite as suite  # noqa: E402


def test_families_count_attention_and_gelu_forms_together():
    ops = ["Attention", "MultiHeadAttention", "Gelu", "BiasGelu", "QuickGelu", "SkipLayerNormalization",
           "LayerNormalization", "EmbedLayerNormalization", "MatMul"]
    counts = suite.family_counts(ops)
    assert counts["attention"] == 2 and counts["gelu"] == 3 and counts["skip_ln"] == 1 and counts["embed"] == 1
    assert counts["norm"] == 3  # LayerNorm + SkipLayerNorm + EmbedLayerNorm
    assert suite.format_counts(counts) == "att2 emb1 sln1 norm3 gelu3"
    assert suite.format_counts(suite.family_counts([])) == "none"


def test_shortfall_is_per_family():
    ort = suite.family_counts(["Attention", "SkipLayerNormalization", "FastGelu"])
    tfopt = suite.family_counts(["MultiHeadAttention", "LayerNormalization", "BiasGelu", "Gelu"])
    assert suite.shortfall(ort, tfopt) == ["skip_ln"]
    assert suite.shortfall(ort, ort) == []


def test_tfopt_flags_follow_the_fusion_options():
    args = {"model_type": "gpt2", "num_heads": 2, "hidden_size": 4, "opt_level": 0,
            "options": {"enable_skip_layer_norm": False, "use_multi_head_attention": True}}
    assert suite.tfopt_flags(args) == ["--model_type", "gpt2", "--num_heads", "2", "--hidden_size", "4",
                                       "--opt_level", "0", "--disable_skip_layer_norm"]
    assert suite.tfopt_flags({"model_type": None, "options": {}})[:2] == ["--model_type", "bert"]
    command = suite.tfopt_command("tfopt", "in.onnx", "out.onnx", {"model_type": "bert"})
    assert command[:6] == ["tfopt", "optimize", "--input", "in.onnx", "--output", "out.onnx"]


def test_error_line_and_category():
    stderr = "fusing...\ntfopt: error: model.onnx: node 'a' (Attention): No opset import for domain 'com.microsoft'\n"
    line = suite.first_error_line(stderr)
    assert line.startswith("tfopt: error: model.onnx")
    assert suite.first_error_line("Traceback ...\n  File x\nNameError: name 'f' is not defined\n") == "NameError: name 'f' is not defined"
    assert suite.error_category(line) == "refused: contrib op without its opset import"
    assert suite.error_category("value '284' is defined twice") == "refused: a value defined twice"
    assert suite.error_category("hidden_size=8 does not match the model: ...") == "refused: --num_heads/--hidden_size vs graph"
    assert suite.error_category("m.onnx: ONNX Runtime cannot run the model on generated inputs (hidden_size should be "
                                "divisible by...); pass --no-validate") == "refused: the input does not run in ONNX Runtime on tfopt's inputs"
    assert suite.error_category("something 'x' odd 12").startswith("tfopt error: something … odd …")


def test_verdict_order():
    base = {"tfopt_exit": 0, "loads": True, "parity": "ok", "ort": suite.family_counts(["Attention"]),
            "tfopt": suite.family_counts(["MultiHeadAttention"])}
    assert suite.verdict(dict(base))["pass"]
    assert suite.verdict(dict(base, tfopt=suite.family_counts([])))["category"] == "fuses less than ORT: attention"
    assert suite.verdict(dict(base, parity="fail"))["category"] == "parity"
    assert suite.verdict(dict(base, loads=False))["category"] == "output does not load in ONNX Runtime"
    assert suite.verdict(dict(base, tfopt_exit=None))["category"] == "tfopt timeout"


def test_exit_text_drops_the_case_directory():
    row = {"tfopt_exit": 2, "input": "/tmp/cases/a.onnx", "tfopt_error": "tfopt: error: /tmp/cases/a.onnx: value 'x' is defined twice"}
    assert suite.exit_text(row) == "2: tfopt: error: a.onnx: value 'x' is defined twice"
    assert suite.exit_text({"tfopt_exit": 0}) == "0"


def test_relaxed_inputs_keep_the_last_axis():
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8])])
    model = helper.make_model(graph)
    relaxed = suite.relaxed_inputs(model)
    assert [d.dim_param or d.dim_value for d in relaxed.graph.input[0].type.tensor_type.shape.dim] == ["batch", "seq1", 8]
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 1  # the original is left alone


def test_tolerance_is_relative_to_max_one_and_ref():
    assert suite.within_tolerance(np.array([1000.0]), np.array([1000.05]))[0]  # 5e-5 relative
    assert not suite.within_tolerance(np.array([1000.0]), np.array([1000.2]))[0]
    assert suite.within_tolerance(np.array([1e-3]), np.array([1e-3 + 5e-5]))[0]  # |ref| < 1: absolute 1e-4
    assert not suite.within_tolerance(np.array([np.nan]), np.array([0.0]))[0]
    assert not suite.within_tolerance(np.zeros(2), np.zeros(3))[0]
    assert suite.within_tolerance(np.array([True]), np.array([True]))[0]


def test_dim_roles_read_names_then_positions():
    inputs = [
        {"name": "input_ids", "shape": ["batch_size", "seq_len"]},
        {"name": "input_mask", "shape": ["batch_size", "past_sequence_length + sequence_length"]},
        {"name": "past", "shape": [2, "batch_size", 4, "past_sequence_length", 16]},
        {"name": "past_0", "shape": [2, "b", 2, "n", 2]},
    ]
    roles = suite.dim_roles(inputs)
    assert roles == {"batch_size": "batch", "seq_len": "seq", "past_sequence_length + sequence_length": "total",
                     "past_sequence_length": "past", "b": "batch", "n": "past"}
    sizes = {"batch": 2, "seq": 5, "past": 3, "total": 8}
    assert suite.concrete_shape({"name": "attention_mask", "shape": [None, None]}, roles, sizes, has_past=True) == [2, 8]
    assert suite.concrete_shape({"name": "x", "shape": [None, 7, 0]}, roles, sizes, has_past=False) == [2, 7, 5]


def test_padded_mask_keeps_position_zero():
    mask = suite.padded_mask([2, 6], np.int64)
    assert mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert suite.padded_mask([2, 1, 4, 4], np.float32).min() == 1


def _embedding_model(past: bool) -> onnx.ModelProto:
    table = numpy_helper.from_array(np.zeros((7, 4), np.float32), "word_table")
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
             helper.make_node("Gather", ["word_table", "ids32"], ["emb"]),
             helper.make_node("Identity", ["attention_mask"], ["mask_out"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", None])]
    if past:
        inputs.append(helper.make_tensor_value_info("past_0", TensorProto.FLOAT, [2, "batch", 2, "past_seq_len", 2]))
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("mask_out", TensorProto.INT64, None)], [table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_feeds_keep_ids_in_the_table_and_masks_past_plus_sequence():
    model = _embedding_model(past=True)
    assert suite.index_limit(model, "input_ids") == 7
    feeds = suite.make_feeds(model, batch=2, seq=5, past=3)
    assert feeds["input_ids"].shape == (2, 5) and feeds["input_ids"].max() < 7 and feeds["input_ids"].dtype == np.int64
    assert feeds["attention_mask"].shape == (2, 8) and feeds["attention_mask"][1, -1] == 0
    assert feeds["past_0"].shape == (2, 2, 2, 3, 2) and feeds["past_0"].dtype == np.float32
    plain = suite.make_feeds(_embedding_model(past=False), batch=2, seq=5, past=3)
    assert plain["attention_mask"].shape == (2, 5)


def test_case_names_and_parameter_labels():
    assert suite.safe_name("attention.gpt2#0(disable_skip_layer_norm)") == "attention.gpt2_0_disable_skip_layer_norm"
    assert suite._param_label((("huggingface", "Gelu", int), True)) == "huggingface-Gelu-int-True"
    siblings = [{"test": "test_embed", "source": f"/x/format{i}.onnx", "options": {}} for i in (3, 8)]
    assert suite._case_name("optimizer", siblings[1], siblings, 1) == "optimizer.embed/format8"
    loop = [{"test": "test_gpt2", "source": None, "options": {"enable_skip_layer_norm": False}},
            {"test": "test_gpt2", "source": None, "options": {}}]
    assert suite._case_name("attention", loop[0], loop, 0) == "attention.gpt2#0(disable_skip_layer_norm)"
    assert suite._case_name("attention", loop[1], loop, 1) == "attention.gpt2#1"


def test_markdown_keeps_the_hand_written_part(tmp_path):
    doc = tmp_path / "report.md"
    doc.write_text("old table\n" + suite.KEEP_MARKER + "\n## Notes\nkept\n")
    row = suite.verdict({"name": "c", "kind": "cpp", "tfopt_exit": 0, "loads": True, "parity": "ok",
                         "ort": suite.family_counts([]), "tfopt": suite.family_counts([])})
    text = suite.markdown([row], ["note"], "tree", 60.0, "working tree", doc)
    assert "**1/1 pass**" in text and "old table" not in text and text.endswith("## Notes\nkept\n")


def test_input_noise_is_small_for_a_well_conditioned_graph_and_large_for_cancellation():
    """The parity judgement's fallback: how far an input's outputs move when its weights move one ulp."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    weight = numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w")
    # y = x @ w; z = (x @ w) - (x @ w2) with w2 a copy of w: exactly 0, until the weights move independently
    close = numpy_helper.from_array(numpy_helper.to_array(weight).copy(), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("MatMul", ["x", "w2"], ["y2"]),
        helper.make_node("Sub", ["y", "y2"], ["z"]),
        helper.make_node("Mul", ["z", "big"], ["amplified"]),
    ]
    big = numpy_helper.from_array(np.array(1e6, np.float32), "big")
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "amplified")]
    model = helper.make_model(helper.make_graph(nodes, "noise", [x], outputs, [weight, close, big]),
                              opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.normal(size=(2, 8)).astype(np.float32)}
    import onnxruntime as ort
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y", "amplified"], feeds)
    noise = suite._input_noise(model, feeds, ["y", "amplified"], expected)
    assert 0 < noise["y"] < 1e-5
    assert noise["amplified"] > 1e-3  # one-ulp moves of w and w2 no longer cancel, and are amplified
