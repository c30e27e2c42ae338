"""GPTQ on a user's own model: --calibration-text FILE, tokenized with the model directory's tokenizer."""

from __future__ import annotations

import inspect
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tfopt.errors import TfoptError
from tfopt.graph import fuse_file
from tfopt.results import RunContext


def _tokenizer(text: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(text.splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """A tiny Llama saved as a user's directory with its own tokenizer, exported and fused."""
    from tfopt_llama.export import export_source
    from tfopt_llama.models import load_source

    root = tmp_path_factory.mktemp("user-llama")
    text = inspect.getsource(json.decoder) + inspect.getsource(json.encoder)
    directory = root / "model"
    load_source("tiny-llama").model.save_pretrained(directory)
    _tokenizer(text).save_pretrained(directory)
    (root / "calibration.txt").write_text(text, encoding="utf-8")
    ctx = RunContext(family="llama", source=str(directory), work_dir=root / "run")
    exported = export_source(ctx)
    fused = fuse_file(exported.model_path, root / "run" / "optimized.onnx", exported.info)
    return ctx, fused, root


def _codes(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name.endswith("_Q4")}


def test_calibration_text_makes_gptq_round_a_users_model(user_model, tmp_path):
    from tfopt_llama.hooks import convert_precision_hook

    ctx, fused, root = user_model
    ctx.options = {"precision": "int4"}
    nearest = convert_precision_hook(ctx, fused)
    assert not any("GPTQ" in note for note in nearest.notes)  # no calibration text: nearest, as before
    nearest_codes = _codes(nearest.model_path)
    ctx.options = {"precision": "int4", "calibration_text": str(root / "calibration.txt")}
    gptq = convert_precision_hook(ctx, fused)
    assert any("GPTQ, calibrated on 8192 activation rows" in note for note in gptq.notes), gptq.notes  # 64 windows x 128
    assert gptq.validation is not None and gptq.validation.passed
    gptq_codes = _codes(gptq.model_path)
    assert gptq_codes.keys() == nearest_codes.keys() and any(not np.array_equal(gptq_codes[k], nearest_codes[k]) for k in gptq_codes)


@pytest.mark.parametrize("problem, message", [
    ("no tokenizer", "no usable tokenizer"),
    ("short text", "GPTQ needs at least 129"),
    ("missing file", "cannot read"),
])
def test_calibration_text_problems_are_one_line(user_model, tmp_path, problem, message):
    from tfopt.decoder_precision import calibration_for

    ctx, _, root = user_model
    text = root / "calibration.txt"
    source = ctx.source
    if problem == "no tokenizer":
        source = str(tmp_path)  # a directory without tokenizer files
    elif problem == "short text":
        text = tmp_path / "short.txt"
        text.write_text("def f(): pass\n", encoding="utf-8")
    else:
        text = tmp_path / "absent.txt"
    run = RunContext(family="llama", source=source, work_dir=tmp_path, options={"precision": "int4", "calibration_text": str(text)})
    with pytest.raises(TfoptError, match=message):
        calibration_for(run, "int4", "weight_only", {})
