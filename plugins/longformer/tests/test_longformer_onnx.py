"""Both ONNX targets of tiny-longformer: fused-op counts, parity with HF eager, the contrib op's schema and weights."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from longformer_cases import SHAPES, feed, hf_hidden, max_valid_diff
from tfopt.bench import ort_session
from tfopt.graph import count_ops, fuse_file
from tfopt.graph.io import load_model, save_model
from tfopt.results import RunContext
from tfopt_longformer import extension
from tfopt_longformer.fuse import OPTIMIZED_FILE, fuse_cuda, write_contrib
from tfopt_longformer.modeling import DOMAIN, pack
from tfopt_longformer.onnx_attention import MS_DOMAIN, schema_problems, to_function
from tfopt_longformer.verify import runnable

LAYERS = 2


def _run(path, tensors):
    session = ort_session(path)
    return session.run(None, {k: v.numpy() for k, v in tensors.items()})[0]


def test_export_has_one_attention_node_per_layer_and_runs_any_length(tiny, exported_tiny):
    _, exported = exported_tiny
    model = onnx.load(str(exported.model_path))
    attention = [n for n in model.graph.node if n.domain == DOMAIN]
    assert len(attention) == LAYERS
    assert "Softmax" not in {n.op_type for n in model.graph.node}  # the attention lives in the function only
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert all(dims), f"batch and sequence must be dynamic: {dims}"
    for batch, sequence, globals_ in SHAPES:
        tensors = feed(batch, sequence, globals_)
        diff = max_valid_diff(hf_hidden(tiny.model, tensors), _run(exported.model_path, tensors), tensors["attention_mask"])
        assert diff <= 1e-4, (batch, sequence, globals_, diff)


def test_cpu_target_is_fused_and_matches_hf(tiny, fused_tiny):
    fused = fused_tiny("cpu")
    assert not fused.missing, fused.missing
    assert fused.op_counts["LongformerAttention"] == LAYERS
    assert fused.op_counts["SkipLayerNormalization"] == 2 * LAYERS
    assert fused.op_counts["BiasGelu"] == LAYERS
    assert fused.op_counts["EmbedLayerNormalization"] == 1
    assert fused.validation is not None and fused.validation.passed
    for batch, sequence, globals_ in SHAPES:
        tensors = feed(batch, sequence, globals_, seed=1)
        diff = max_valid_diff(hf_hidden(tiny.model, tensors), _run(fused.model_path, tensors), tensors["attention_mask"])
        assert diff <= 1e-4, (batch, sequence, globals_, diff)


def test_cuda_target_nodes_follow_ort_schema_and_weight_layout(tiny, fused_tiny):
    fused = fused_tiny("cuda")
    assert not fused.missing, fused.missing
    model = onnx.load(str(fused.model_path))
    nodes = [n for n in model.graph.node if n.domain == MS_DOMAIN and n.op_type == "LongformerAttention"]
    assert len(nodes) == LAYERS and not any(n.domain == DOMAIN for n in model.graph.node)
    assert not model.functions
    assert schema_problems(model) == []
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node, layer in zip(nodes, tiny.model.encoder.layer):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"num_heads": 4, "window": 4}
        packed = pack(layer.attention.self)
        for index, name in ((1, "weight"), (2, "bias"), (4, "global_weight"), (5, "global_bias")):
            np.testing.assert_array_equal(inits[node.input[index]], packed[name].numpy())
    # ORT's CPU provider cannot load it: no kernel
    with pytest.raises(Exception):
        ort_session(fused.model_path)


def test_cuda_node_semantics_by_the_extension(tiny, fused_tiny):
    """Each contrib node's packed weights and attributes, computed by the C++ kernel, reproduce HF's layer outputs."""
    model = onnx.load(str(fused_tiny("cuda").model_path))
    inits = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.domain == MS_DOMAIN and n.op_type == "LongformerAttention"]
    tensors = feed(2, 37, [0, 11])
    with torch.inference_mode():
        out = tiny.model(**tensors, output_hidden_states=True)
    mask = (tensors["attention_mask"] == 0).float() * -10000.0
    glob = ((tensors["global_attention_mask"] != 0) & (tensors["attention_mask"] != 0)).int()
    valid = tensors["attention_mask"].bool()
    for node, layer, hidden, expected in zip(nodes, tiny.model.encoder.layer, out.hidden_states, out.hidden_states[1:]):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w, b, gw, gb = (inits[node.input[i]] for i in (1, 2, 4, 5))
        with torch.inference_mode():
            attended = extension.attention(hidden, w, b, mask, gw, gb, glob, attrs["num_heads"], attrs["window"])
            attended = layer.attention.output(attended, hidden)
            actual = layer.output(layer.intermediate(attended), attended)
        assert float((actual - expected)[valid].abs().max()) <= 1e-5


def test_cuda_target_stand_in_matches_hf_and_schema_check_finds_breakage(tiny, fused_tiny, tmp_path):
    path = fused_tiny("cuda").model_path
    with runnable(path) as (stand_in, reference):
        assert "standard-op body" in reference
        for batch, sequence, globals_ in SHAPES:
            tensors = feed(batch, sequence, globals_, seed=2)
            diff = max_valid_diff(hf_hidden(tiny.model, tensors), _run(stand_in, tensors), tensors["attention_mask"])
            assert diff <= 1e-4, (batch, sequence, globals_, diff)
    assert not list(path.parent.glob(".standin-*"))
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.domain == MS_DOMAIN and n.op_type == "LongformerAttention")
    del node.attribute[:]
    assert any("required int attribute 'num_heads'" in p for p in schema_problems(model))
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.domain == MS_DOMAIN and n.op_type == "LongformerAttention")
    weight = next(t for t in model.graph.initializer if t.name == node.input[1])
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight).T.copy(), weight.name))
    assert any("the kernel wants" in p for p in schema_problems(model))
    model = onnx.load(str(path))
    to_function(model)
    assert schema_problems(model) == ["no com.microsoft::LongformerAttention node"]


def test_cuda_fuse_reads_each_model_once(exported_tiny, tmp_path, monkeypatch):
    """The contrib rewrite reads its input once (external weights too, and they stay external); the stage
    takes its op counts from the model it wrote instead of reading the file back."""
    _, exported = exported_tiny
    inline = fuse_file(exported.model_path, tmp_path / "standard.onnx", exported.info, target="cuda", validate=False).model_path
    external = save_model(load_model(inline), tmp_path / "external" / "standard.onnx", external=True)
    reads = []
    real_load = onnx.load
    monkeypatch.setattr(onnx, "load", lambda f, *args, **kwargs: reads.append(Path(f)) or real_load(f, *args, **kwargs))
    written = {path: write_contrib(path, path.with_name("contrib.onnx")) for path in (inline, external)}
    assert reads == [inline, external]
    assert not (tmp_path / "contrib.onnx.data").exists() and (tmp_path / "external" / "contrib.onnx.data").is_file()
    weights = []
    for source, model in written.items():
        on_disk = real_load(str(source.with_name("contrib.onnx")))
        assert count_ops(model) == dict(Counter(node.op_type for node in on_disk.graph.node))
        weights.append({t.name: onnx.numpy_helper.to_array(t) for t in on_disk.graph.initializer})
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][name], weights[1][name]) for name in weights[0])

    reads.clear()
    work = tmp_path / "run"
    work.mkdir()
    ctx = RunContext(family="longformer", source="tiny-longformer", work_dir=work, options={"target": "cuda"})
    fused = fuse_cuda(ctx, exported)
    scratch_reads = [path for path in reads if path.name == OPTIMIZED_FILE and path.parent.name.startswith(".tfopt-longformer-")]
    assert len(scratch_reads) == 1 and fused.model_path not in reads
    assert fused.op_counts["LongformerAttention"] == LAYERS
