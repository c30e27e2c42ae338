"""fp16 and int8 of models whose weights are external data, as real-size exports are.

Tiny models keep their weights inline unless forced; here a tiny BERT is re-saved with
its weights in ``exported.onnx.data`` (small constants inline, as exporters write them),
fused by tfopt, and converted from another working directory into another folder. Every
test also checks that the input's files are byte-for-byte unchanged and that the
output's weights lie in ``<output>.data`` beside it. The >2 GB route is checked by
lowering protobuf's message limit: no step may serialize a whole model with its weights.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import tfopt
from tfopt import precision
from tfopt.cli import main
from tfopt.errors import TfoptError
from tfopt.feeds import dummy_feeds, session_feed
from tfopt.verify import TOLERANCES

HEADS, HIDDEN, LAYERS, VOCAB = 4, 64, 2, 1024


def _files(folder: Path) -> dict[str, tuple[str, int]]:
    """name -> (sha256, mtime_ns) of every file in ``folder``."""
    return {
        path.name: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.iterdir())
    }


def _locations(model_path: Path) -> set[str]:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return {entry.value for tensor in graph.initializer for entry in tensor.external_data if entry.key == "location"}


def _const_b_matmuls(model_path: Path) -> int:
    model = onnx.load(str(model_path), load_external_data=False)
    weights = {tensor.name for tensor in model.graph.initializer}
    return sum(1 for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights)


def _max_diff(reference_path: Path, candidate_path: Path) -> float:
    """Max abs difference on valid (unpadded) positions over several shapes."""
    reference = ort.InferenceSession(str(reference_path), providers=["CPUExecutionProvider"])
    candidate = ort.InferenceSession(str(candidate_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for feed in dummy_feeds(reference_path, batch_sizes=(1, 3), sequence_lengths=(5, 16)):
        expected = reference.run(None, session_feed(reference, feed))[0]
        actual = candidate.run(None, session_feed(candidate, feed))[0]
        assert np.isfinite(actual).all()
        valid = feed["attention_mask"].astype(bool)
        worst = max(worst, float(np.abs(actual - expected)[valid].max()))
    return worst


def _save_external(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=path.name + ".data", size_threshold=1024,
    )
    return path


@pytest.fixture(scope="session")
def external_bert(tmp_path_factory) -> Path:
    """A folder with a 2-layer BERT (exported.onnx + .data) and its fused form (optimized.onnx + .data)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tfopt_host_models import export_tiny_bert

    folder = tmp_path_factory.mktemp("external-bert")
    inline = export_tiny_bert(folder / "inline.onnx", hidden=HIDDEN, heads=HEADS, layers=LAYERS, vocab=VOCAB, pooler=False)
    exported = _save_external(onnx.load(str(inline)), folder / "exported.onnx")
    inline.unlink()
    tfopt.optimize_model(exported, model_type="bert").save_model_to_file(folder / "optimized.onnx")
    assert sorted(p.name for p in folder.iterdir()) == [
        "exported.onnx", "exported.onnx.data", "optimized.onnx", "optimized.onnx.data"
    ]
    return folder


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """An empty working directory that is neither the input's folder nor the output's."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd
    assert list(cwd.iterdir()) == []


def test_fp16_of_an_external_data_model(external_bert, tmp_path, elsewhere):
    source = external_bert / "optimized.onnx"
    before = _files(external_bert)
    output = tmp_path / "out" / "model.fp16.onnx"
    result = precision.convert(source, "fp16", output)
    assert result.model_path == output and result.precision == "fp16"
    assert sorted(p.name for p in output.parent.iterdir()) == ["model.fp16.onnx", "model.fp16.onnx.data"]
    assert _locations(output) == {"model.fp16.onnx.data"}
    source_types = Counter(t.data_type for t in onnx.load(str(source)).graph.initializer)
    output_types = Counter(t.data_type for t in onnx.load(str(output)).graph.initializer)
    # a fused BERT has no LM head and no NaN-prone op: every float weight becomes fp16
    assert output_types[TensorProto.FLOAT16] == source_types[TensorProto.FLOAT] > 20
    assert output_types[TensorProto.FLOAT] == 0
    diff = _max_diff(source, output)
    assert 1e-5 < diff <= TOLERANCES["fp16"]  # really converted, and close
    assert _files(external_bert) == before


def test_int8_of_an_external_data_model(external_bert, tmp_path, elsewhere):
    source = external_bert / "optimized.onnx"
    before = _files(external_bert)
    output = tmp_path / "out" / "model.int8.onnx"
    precision.convert(source, "int8", output)
    assert sorted(p.name for p in output.parent.iterdir()) == ["model.int8.onnx", "model.int8.onnx.data"]
    assert _locations(output) == {"model.int8.onnx.data"}
    ops = Counter(node.op_type for node in onnx.load(str(output)).graph.node)
    assert ops["MatMulInteger"] == _const_b_matmuls(source) == 6 * LAYERS  # Q, K, V, output, 2 FFN per layer
    assert ops["DynamicQuantizeLinear"] > 0 and _const_b_matmuls(output) == 0
    # int8 weight matrices (per-channel quantization adds a 1-D int8 zero point per weight)
    int8_weights = [t for t in onnx.load(str(output)).graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_weights) == 6 * LAYERS
    diff = _max_diff(source, output)
    assert 1e-4 < diff <= TOLERANCES["int8"]
    assert _files(external_bert) == before


@pytest.mark.parametrize("target", ["fp16", "int8"])
def test_default_output_lies_beside_the_input_with_its_own_data(external_bert, tmp_path, elsewhere, target):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("optimized.onnx", "optimized.onnx.data"):
        (folder / name).write_bytes((external_bert / name).read_bytes())
    before = _files(folder)
    result = precision.convert(folder / "optimized.onnx", target)
    name = f"optimized.{target}.onnx"
    assert result.model_path == folder / name and _locations(result.model_path) == {name + ".data"}
    assert sorted(set(_files(folder)) - set(before)) == [name, name + ".data"]
    assert {key: _files(folder)[key] for key in before} == before


def _limit_protobuf(monkeypatch, limit: int) -> None:
    """Protobuf's 2 GB message limit, lowered to ``limit`` bytes: serializing any bigger
    ModelProto raises, as it does for a real model over 2 GB."""
    serialize = onnx.ModelProto.SerializeToString

    def limited(self, *args, **kwargs):
        data = serialize(self, *args, **kwargs)
        if len(data) > limit:
            raise ValueError(f"Message onnx.ModelProto exceeds maximum protobuf size of {limit} bytes (test limit)")
        return data

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", limited)


@pytest.fixture
def protobuf_limit(monkeypatch, external_bert):
    """The limit at half the tiny BERT's weight bytes, above its graph without weights."""
    limit = (external_bert / "optimized.onnx.data").stat().st_size // 2
    structure = onnx.load(str(external_bert / "optimized.onnx"), load_external_data=False).ByteSize()
    assert structure < limit
    _limit_protobuf(monkeypatch, limit)
    return limit


def test_the_limit_stands_for_protobufs(protobuf_limit, external_bert):
    with pytest.raises(ValueError, match="exceeds maximum protobuf size"):
        onnx.shape_inference.infer_shapes(onnx.load(str(external_bert / "optimized.onnx")))


@pytest.mark.parametrize("target", ["fp16", "int8"])
def test_conversion_never_serializes_the_whole_model(protobuf_limit, external_bert, tmp_path, elsewhere, target):
    """The > 2 GB route: type inference on a weightless copy, weights written as external data."""
    source = external_bert / "optimized.onnx"
    output = precision.convert(source, target, tmp_path / f"model.{target}.onnx").model_path
    assert _locations(output) == {output.name + ".data"}
    assert _max_diff(source, output) <= TOLERANCES[target]


def test_fp16_of_a_large_model_keeps_its_block_list(monkeypatch):
    """Over the limit the NaN-prone ops still stay fp32: types are inferred without the weights
    (the converter can only cast around a blocked op whose input type it knows)."""
    rng = np.random.default_rng(3)
    width = 128
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="project"),
        helper.make_node("ReduceMean", ["h"], ["mean"], axes=[-1], name="mean"),
        helper.make_node("Sub", ["h", "mean"], ["d"], name="center"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1], name="variance"),
        helper.make_node("Add", ["d", "var"], ["y"], name="out"),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    _limit_protobuf(monkeypatch, 4 * width * width // 2)
    converted = precision.convert_proto_to_fp16(model)
    assert {t.name: t.data_type for t in converted.graph.initializer}["w"] == TensorProto.FLOAT16
    made_by = {output: node for node in converted.graph.node for output in node.output}
    square = next(node for node in converted.graph.node if node.op_type == "Pow")
    assert made_by[square.input[0]].op_type == "Cast"  # Pow reads an fp32 cast: it computes in fp32
    assert made_by[square.input[0]].attribute[0].i == TensorProto.FLOAT


def test_cli_optimize_float16_of_an_external_data_model(external_bert, tmp_path, elsewhere, monkeypatch):
    """`tfopt optimize --float16` (a model as large as real ones: weights go to <output>.data)."""
    from tfopt.graph import io as graph_io

    monkeypatch.setattr(graph_io, "EXTERNAL_DATA_THRESHOLD", 0)
    before = _files(external_bert)
    output = tmp_path / "out" / "bert.fp16.onnx"
    result = CliRunner().invoke(
        main, ["optimize", "--input", str(external_bert / "exported.onnx"), "--output", str(output), "--float16"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in output.parent.iterdir()) == ["bert.fp16.onnx", "bert.fp16.onnx.data"]
    assert _locations(output) == {"bert.fp16.onnx.data"}
    assert any(t.data_type == TensorProto.FLOAT16 for t in onnx.load(str(output)).graph.initializer)
    assert _max_diff(external_bert / "exported.onnx", output) <= TOLERANCES["fp16"]
    assert _files(external_bert) == before


def test_cli_optimize_float16_of_a_small_external_data_model_writes_data_beside_it(external_bert, tmp_path, elsewhere):
    output = tmp_path / "out" / "bert.fp16.onnx"
    result = CliRunner().invoke(
        main, ["optimize", "--input", str(external_bert / "exported.onnx"), "--output", str(output), "--float16"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert _locations(output) == {"bert.fp16.onnx.data"}


@pytest.mark.parametrize("target", ["fp16", "int8"])
def test_the_inputs_data_file_is_never_an_output(external_bert, tmp_path, target):
    """exported.onnx's weights are exported.onnx.data: writing "exported.onnx" elsewhere is fine,
    but an output whose .data is the input's data file is refused before anything is written."""
    folder = tmp_path / "m"
    folder.mkdir()
    model = onnx.load(str(external_bert / "optimized.onnx"))
    onnx.save_model(model, str(folder / "a.onnx"), save_as_external_data=True, location="b.onnx.data", size_threshold=1024)
    before = _files(folder)
    with pytest.raises(TfoptError, match="refusing to overwrite the input"):
        precision.convert(folder / "a.onnx", target, folder / "b.onnx")
    assert _files(folder) == before


def test_fp16_of_external_weights_without_their_folder_is_a_one_line_error(external_bert):
    model = onnx.load(str(external_bert / "optimized.onnx"), load_external_data=False)
    with pytest.raises(TfoptError, match="stored as external data") as info:
        precision.convert_proto_to_fp16(model)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("target", ["fp16", "int8"])
def test_a_failed_conversion_leaves_nothing_behind(external_bert, tmp_path, monkeypatch, target):
    output = tmp_path / "out" / "model.onnx"
    if target == "fp16":
        import onnxruntime.transformers.float16 as float16

        def broken(*args, **kwargs):
            raise RuntimeError("converter broke")

        monkeypatch.setattr(float16, "convert_float_to_float16", broken)
    else:
        import onnxruntime.quantization as quantization

        def broken(model_input, model_output, **kwargs):  # writes half a model, then fails
            Path(model_output).write_bytes(b"half")
            Path(str(model_output) + ".data").write_bytes(b"half")
            raise RuntimeError("quantizer broke")

        monkeypatch.setattr(quantization, "quantize_dynamic", broken)
    with pytest.raises(TfoptError, match="broke") as info:
        precision.convert(external_bert / "optimized.onnx", target, output)
    assert "\n" not in str(info.value)
    assert not output.parent.exists() or list(output.parent.iterdir()) == []


# ----------------------------------------------------------------------------- int8 graph forms


def _model(nodes, inputs, outputs, initializers, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(domain, 1) for domain in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def _run(path: Path, feed: dict) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_int8_quantizes_gemm_linears(tmp_path):
    """Gemm with transB/alpha/beta (nn.Linear on 2-D input in legacy exports) becomes MatMulInteger;
    Gemm with transA is left fp32; the result matches the fp32 model."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 16)).astype(np.float32)  # (out, in): transB=1
    w2 = rng.standard_normal((32, 8)).astype(np.float32)
    w3 = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1, alpha=0.5, beta=2.0, name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="fc2"),
        helper.make_node("Transpose", ["h2"], ["h2t"], perm=[1, 0]),
        helper.make_node("Gemm", ["h2t", "w3"], ["y"], transA=1, name="fc3"),
    ]
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), "b2"),
        numpy_helper.from_array(w3, "w3"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    source = _save_external(model, tmp_path / "gemm.onnx")
    result = precision.convert(source, "int8")
    ops = Counter(node.op_type for node in onnx.load(str(result.model_path)).graph.node)
    assert ops["MatMulInteger"] == 2 and ops["Gemm"] == 1 and "Gemm" in " ".join(result.notes)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    expected, actual = _run(source, {"x": x}), _run(result.model_path, {"x": x})
    assert np.abs(actual - expected).max() <= 0.05 * np.abs(expected).max()
    assert not np.allclose(actual, expected, atol=1e-6)  # really quantized


def test_gemm_rewrite_is_exact():
    """The MatMul + Add form computes what the Gemm computed (checked in fp32, before quantizing)."""
    import onnx_ir as ir

    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.25, beta=3.0)]
    inits = [
        numpy_helper.from_array(rng.standard_normal((6, 5)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])],
        inits,
    )
    rewritten = ir.serde.deserialize_model(onnx.ModelProto.FromString(model.SerializeToString()))
    assert precision.gemms_to_matmuls(rewritten) == 1
    proto = ir.serde.serialize_model(rewritten)
    assert [node.op_type for node in proto.graph.node] == ["MatMul", "Mul", "Add"]
    assert [value.name for value in proto.graph.output] == ["y"]
    x = rng.standard_normal((3, 5)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    actual = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_int8_quantizes_a_matmul_fed_by_a_contrib_op(tmp_path):
    """GPT-2's dynamo export, fused: c_proj's MatMul reads MultiHeadAttention's output, which
    onnx cannot type; ORT's quantizer then stopped with 'Unable to find data type'."""
    rng = np.random.default_rng(2)
    width = 16
    nodes = [
        helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["context"], domain="com.microsoft", num_heads=2),
        helper.make_node("MatMul", ["context", "w"], ["projected"]),
        helper.make_node("Add", ["projected", "b"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b"),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "sequence", width]) for name in "qkv"]
    model = _model(
        nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", width])],
        inits, domains=["com.microsoft"],
    )
    source = tmp_path / "mha.onnx"
    onnx.save(model, str(source))
    result = precision.convert(source, "int8")
    ops = Counter(node.op_type for node in onnx.load(str(result.model_path)).graph.node)
    assert ops["MatMulInteger"] == 1 and ops["MatMul"] == 0
    feed = {name: rng.standard_normal((2, 3, width)).astype(np.float32) for name in "qkv"}
    expected, actual = _run(source, feed), _run(result.model_path, feed)
    assert np.abs(actual - expected).max() <= 0.05 * np.abs(expected).max()


def test_weightless_type_inference_types_what_full_inference_types(external_bert):
    model = onnx.load(str(external_bert / "exported.onnx"))
    full = {info.name: info.type.tensor_type.elem_type for info in onnx.shape_inference.infer_shapes(model).graph.value_info}
    precision.add_inferred_types(model)
    weightless = {info.name: info.type.tensor_type.elem_type for info in model.graph.value_info}
    assert len(full) > 50 and weightless == full
