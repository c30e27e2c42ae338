"""The C++ extension computes HF's Longformer self-attention: both CPU implementations, every shape kind, meta."""

from __future__ import annotations

import pytest
import torch

from longformer_cases import SHAPES, feed, hf_hidden, max_valid_diff
from tfopt.errors import TfoptError
from tfopt_longformer import extension
from tfopt_longformer.modeling import LongformerForExport, PackedSelfAttention, op_masks


@pytest.mark.parametrize("impl", ["loops", "aten"])
@pytest.mark.parametrize(("batch", "sequence", "globals_"), SHAPES)
def test_model_with_extension_equals_hf(tiny, impl, batch, sequence, globals_):
    tensors = feed(batch, sequence, globals_)
    expected = hf_hidden(tiny.model, tensors)
    with torch.inference_mode():
        actual = LongformerForExport(tiny.model, impl)(**tensors).numpy()
    assert max_valid_diff(expected, actual, tensors["attention_mask"]) <= 1e-5


def _hf_self_attention(self_attention, hidden, attention_mask, global_attention_mask):
    """HF's LongformerSelfAttention with the mask its model would build."""
    merged = attention_mask * (global_attention_mask + 1)
    ext = torch.zeros(merged.shape)
    ext[merged == 0] = torch.finfo(torch.float32).min
    ext[merged == 2] = torch.finfo(torch.float32).max
    with torch.inference_mode():
        return self_attention(hidden, attention_mask=ext, is_index_masked=ext < 0, is_index_global_attn=ext > 0,
                              is_global_attn=bool((ext > 0).any()))[0]


@pytest.mark.parametrize("impl", ["loops", "aten"])
def test_self_attention_alone_wide_heads(impl):
    """One layer at 12 heads x 16, window 32, S = 100 (padded to 128 by HF): the op itself, padded keys zeroed."""
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    torch.manual_seed(0)
    config = LongformerConfig(hidden_size=192, num_attention_heads=12, attention_window=[32])
    hf = LongformerSelfAttention(config, 0).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = PackedSelfAttention(hf, impl)
    for globals_ in ([], [0, 17, 99]):
        tensors = feed(2, 128, globals_)
        tensors["attention_mask"][1, 100:] = 0
        hidden = torch.randn(2, 128, 192)
        expected = _hf_self_attention(hf, hidden, tensors["attention_mask"], tensors["global_attention_mask"])
        with torch.inference_mode():
            actual = ours(hidden, *op_masks(tensors["attention_mask"], tensors["global_attention_mask"]))
        assert float((expected - actual).abs().max()) <= 1e-5  # padded rows too: zeros in both
        assert actual[1, 100:].abs().max() == 0


def test_fake_kernel_lets_torch_export_trace_the_op(tiny):
    model = LongformerForExport(tiny.model).eval()
    tensors = feed(2, 13, [0, 7])
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=4096)
    program = torch.export.export(model, (), kwargs=tensors, dynamic_shapes={k: {0: batch, 1: sequence} for k in tensors})
    ops = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert ops.count("tfopt_longformer.attention.default") == 2
    other = feed(3, 37, [0, 3, 20])
    with torch.inference_mode():
        assert torch.allclose(program.module()(**other), model(**other), atol=1e-6)
    with torch._subclasses.fake_tensor.FakeTensorMode():  # the meta kernel alone: shapes, no computing
        hidden = torch.empty(4, 1000, 32)
        w, b = torch.empty(32, 96), torch.empty(96)
        out = torch.ops.tfopt_longformer.attention(hidden, w, b, torch.empty(4, 1000), w, b, torch.empty(4, 1000, dtype=torch.int32), 4, 4)
        assert out.shape == (4, 1000, 32)


@pytest.mark.parametrize("score", [178.0, 533.0])
def test_a_padded_key_scoring_far_above_the_rest_stays_out(score):
    """A masked slot whose score exceeds the best unmasked one by > 88 once made exp overflow: inf * 0 = NaN."""
    E = 4
    identity = torch.eye(E)
    weight, bias = torch.cat([identity, identity, identity], 1), torch.zeros(3 * E)
    hidden = torch.zeros(1, 6, E)
    hidden[0, :, 1] = 1.0
    hidden[0, 0, 0], hidden[0, 1, 0] = 1.0, score  # query 0 scores score/2 against the padded key 1
    mask = torch.zeros(1, 6)
    mask[0, 1] = -10000.0
    glob = torch.zeros(1, 6, dtype=torch.int32)
    loops, aten = (extension.attention(hidden, weight, bias, mask, weight, bias, glob, 1, 2, impl=impl)
                   for impl in ("loops", "aten"))
    assert torch.isfinite(loops).all()
    # query 0 sees keys 0 and 2 (key 1 is padding): scores x0·x0/2 = 1 and x0·x2/2 = 0.5
    p0, p2 = torch.softmax(torch.tensor([1.0, 0.5]), 0)
    assert torch.allclose(loops[0, 0], p0 * hidden[0, 0] + p2 * hidden[0, 2], atol=1e-6)
    assert torch.allclose(loops, aten, atol=1e-5)


def test_bad_arguments_are_clear_errors():
    hidden = torch.randn(1, 10, 32)
    w, b = torch.randn(32, 96), torch.randn(96)
    mask, glob = torch.zeros(1, 10), torch.zeros(1, 10, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="does not divide"):
        extension.attention(hidden, w, b, mask, w, b, glob, 5, 4)
    with pytest.raises(RuntimeError, match=r"weights must be \(E, 3E\)"):
        extension.attention(hidden, w[:, :64], b, mask, w, b, glob, 4, 4)
    with pytest.raises(RuntimeError, match="mask and global"):
        extension.attention(hidden, w, b, mask[:, :5], w, b, glob, 4, 4)
    with pytest.raises(TfoptError, match="unknown Longformer attention implementation"):
        extension.attention(hidden, w, b, mask, w, b, glob, 4, 4, impl="fast")


def test_missing_compiler_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setattr(extension, "_LOADED", False)
    monkeypatch.setenv("TFOPT_CACHE_DIR", str(tmp_path))  # nothing cached there
    monkeypatch.setenv("CXX", "no-such-compiler-tfopt")
    with pytest.raises(TfoptError, match=r"no C\+\+ compiler \(no-such-compiler-tfopt\) found: install one"):
        extension.load()


def test_cache_key_follows_the_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("TFOPT_CACHE_DIR", str(tmp_path))
    first = extension.cache_dir()
    assert first.parent == tmp_path / "longformer-extension"
    source = tmp_path / "copy.cpp"
    source.write_text(extension.CPU_SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(extension, "CPU_SOURCE", source)
    assert extension.cache_dir() != first


def test_failing_build_is_one_line_error_with_log(monkeypatch, tmp_path):
    broken = tmp_path / "broken.cpp"
    broken.write_text("#include <torch/library.h>\nthis is not C++;\n")
    monkeypatch.setattr(extension, "_LOADED", False)
    monkeypatch.setattr(extension, "CPU_SOURCE", broken)
    monkeypatch.setenv("TFOPT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(TfoptError, match="building the Longformer attention extension failed") as info:
        extension.load()
    assert "\n" not in str(info.value)
    assert list((tmp_path / "cache").rglob("build-error.log"))
