"""The export hook: every family x exporter x attention variant, checked on the written graph and numerically."""

from __future__ import annotations

import onnx
import pytest

from bert_pt_cases import FP32_TOLERANCE, TINY_MODELS, VARIANTS, make_ctx, max_valid_diff
from tfopt.errors import TfoptError
from tfopt_bert_pt.cache import source_model
from tfopt.torch_kit import default_exporter
from tfopt_bert_pt.export import DEFAULT_OPSETS, export_source
from tfopt_bert_pt.inputs import dummy_inputs

HAS_SEGMENTS = {model: model in ("tiny-bert", "tiny-albert", "tiny-electra") for model in TINY_MODELS}


def _opset(path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


@pytest.mark.parametrize(("model", "exporter", "attn"), VARIANTS)
def test_export_io_and_parity(exported_variant, model, exporter, attn):
    ctx, exported = exported_variant(model, exporter, attn)
    expected_inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if HAS_SEGMENTS[model] else [])

    assert exported.model_path == ctx.work_dir / "exported.onnx" and exported.model_path.is_file()
    assert exported.exporter == exporter
    assert _opset(exported.model_path) == DEFAULT_OPSETS[exporter]
    assert list(exported.io.inputs) == expected_inputs
    assert set(exported.io.inputs.values()) == {"int64"}
    assert exported.io.outputs == ["last_hidden_state"]
    for name in [*expected_inputs, "last_hidden_state"]:
        assert set(exported.io.dynamic_axes[name]) == {0, 1}, name  # batch and sequence are symbolic
    assert exported.io.dynamic_axes["input_ids"] == exported.io.dynamic_axes["last_hidden_state"]
    assert [p.name for p in ctx.work_dir.iterdir()] == ["exported.onnx"]  # no temp files left behind

    source = source_model(ctx)
    assert exported.info == source.info
    assert source.model.config._attn_implementation == attn
    # Two shapes other than the example the exporter traced (2 x 8), with right padding.
    feeds = dummy_inputs(
        exported.io.inputs, vocab_size=source.vocab_size, pad_token_id=source.pad_token_id,
        batch_sizes=(3,), sequence_lengths=(5, 19),
    )
    assert max_valid_diff(source, exported.model_path, feeds) <= FP32_TOLERANCE


def test_default_exporter_is_torchs_default(tmp_path):
    assert default_exporter() == "dynamo"  # torch 2.13: torch.onnx.export(dynamo=True) by default


def test_opset_option_is_honoured(tmp_path):
    exported = export_source(make_ctx(tmp_path, "tiny-bert", exporter="legacy", opset=18))
    assert _opset(exported.model_path) == 18


def test_unknown_exporter_is_one_line_error(tmp_path):
    with pytest.raises(TfoptError, match="unknown exporter 'tf2onnx'") as error:
        export_source(make_ctx(tmp_path, "tiny-bert", exporter="tf2onnx"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "exported.onnx").exists()


def test_failed_export_leaves_no_output(tmp_path, monkeypatch):
    import torch

    def broken_export(*args, **kwargs):
        open(args[2], "wb").write(b"half a model")  # as if the exporter died midway
        raise RuntimeError("exporter blew up\nwith a long traceback")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    # one line: the exception's lines joined (tfopt.errors.first_line), no traceback
    with pytest.raises(TfoptError, match=r"the legacy exporter failed \(exporter blew up with a long traceback\)$"):
        export_source(make_ctx(tmp_path, "tiny-bert", exporter="legacy"))
    assert list(tmp_path.iterdir()) == []
