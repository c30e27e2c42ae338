"""Generation on the model trained here (``stdlib-t5-tiny``): the ONNX pair against transformers' ``generate``.

A random model's outputs are flat and short-circuit at EOS; this one restores masked docstring
text, so beams compete, end at different lengths and the length penalty and early stopping
change what wins. The pipeline runs once (module fixture); every search setting, the command
line and the quantized decoders are then checked against torch on held-out text.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tfopt.cli import main
from tfopt.encoder_decoder import ATTENTION_MASK, INPUT_IDS, EncoderDecoder
from tfopt.testing import check_adapter
from tfopt_seq2seq.generate import generate_torch
from tfopt_seq2seq.models import load_source
from tfopt_seq2seq.textmodel import SENTINEL, heldout_sources

QUICK = {"exporter": "legacy", "bench_shapes": "1,4,1", "bench_repeat": 2, "bench_warmup": 1}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("stdlib-t5")
    check_adapter("seq2seq", "stdlib-t5-tiny", QUICK, work_dir=work)
    return work / "run"


@pytest.fixture(scope="module")
def source():
    return load_source("stdlib-t5-tiny")


def _sources(count=4, seed=7):
    ids, mask, targets = heldout_sources(count, 32, seed=seed)
    return {INPUT_IDS: ids, ATTENTION_MASK: mask}, targets


def test_the_trained_model_restores_text_so_generation_means_something(source):
    """Greedy output is most of the original window (difflib's ratio); the same architecture untrained writes nothing like it."""
    import dataclasses
    from difflib import SequenceMatcher

    from transformers import T5ForConditionalGeneration

    from tfopt_seq2seq.textmodel import decode_ids

    feed, targets = _sources(8)
    assert (feed[INPUT_IDS] == SENTINEL).sum() >= 20  # the sources really have holes

    def similarity(model) -> float:
        tokens = generate_torch(model, feed, 34)
        return float(np.mean([SequenceMatcher(None, decode_ids(row), decode_ids(target)).ratio() for row, target in zip(tokens, targets)]))

    untrained = dataclasses.replace(source, model=T5ForConditionalGeneration(source.model.config).eval())
    trained, random = similarity(source), similarity(untrained)
    assert trained > 0.7 and random < 0.3, (trained, random)


def test_the_run_verified_greedy_and_beam_generation_token_for_token(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    generation = {case["generation"]: case for case in report["verify"]["cases"] if "generation" in case}
    assert set(generation) == {"greedy", "beam-4"} and all(case["identical"] for case in generation.values())
    assert all(case["new_tokens"] >= 20 for case in generation.values())  # held-out text: whole windows restored


@pytest.mark.parametrize("beams,penalty,stopping", [(2, 1.0, False), (4, 0.6, True), (4, 2.0, "never"), (3, 1.0, True)])
def test_every_search_setting_matches_transformers(run_dir, source, beams, penalty, stopping):
    pair = EncoderDecoder(run_dir / "encoder.opt.onnx", run_dir / "decoder.opt.onnx")
    feed, _ = _sources(3, seed=beams)
    for max_new in (8, 32):  # cut short, and long enough for every beam to end
        want = generate_torch(source, feed, max_new, num_beams=beams, length_penalty=penalty, early_stopping=stopping)
        got = pair.generate(feed, max_new, num_beams=beams, length_penalty=penalty, early_stopping=stopping)
        np.testing.assert_array_equal(got, want)


def test_tfopt_generate_on_the_run_directory(run_dir, source):
    feed, _ = _sources(2, seed=3)
    rows = [list(map(int, ids[mask.astype(bool)])) for ids, mask in zip(feed[INPUT_IDS], feed[ATTENTION_MASK])]
    args = ["generate", str(run_dir), *[f"--prompt-ids={','.join(map(str, row))}" for row in rows], "--max-new-tokens", "32"]
    for beams in (1, 4):
        result = CliRunner().invoke(main, [*args, "--num-beams", str(beams), "--json"])
        assert result.exit_code == 0, result.output
        want = generate_torch(source, feed, 32, num_beams=beams)
        assert json.loads(result.output)["tokens"] == want.tolist()
    sampled = CliRunner().invoke(main, [*args, "--do-sample"])
    assert sampled.exit_code != 0 and "--do-sample is for decoder-only runs" in sampled.output


def test_a_decoder_without_token_metadata_is_refused_in_one_line(tmp_path, run_dir):
    import onnx

    from tfopt.errors import TfoptError

    model = onnx.load(str(run_dir / "decoder.opt.onnx"))
    del model.metadata_props[:]
    bare = tmp_path / "decoder.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(TfoptError, match="lacks decoder_start_token_id"):
        EncoderDecoder(run_dir / "encoder.opt.onnx", bare)


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_lower_precisions_still_generate_what_torch_does(tmp_path, precision):
    """int8/int4: the decoder's weights (the encoder stays fp32); fp16 (a CUDA target's precision, run on
    the CPU here): both graphs."""
    check_adapter("seq2seq", "stdlib-t5-tiny", {**QUICK, "precision": precision, "benchmark": False}, work_dir=tmp_path)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    agreement = report["verify"]["top1_agreement"]  # next tokens along torch's greedy output, as torch's
    assert agreement >= {"fp16": 0.95, "int8": 0.95, "int4": 0.9}[precision], agreement
    encoder = "encoder.opt.fp16.onnx" if precision == "fp16" else "encoder.opt.onnx"
    assert report["outputs"]["encoder_final"].endswith(encoder)


def test_whisper_decodes_synthesized_audio_as_transformers_does(tmp_path):
    """The audio pipeline end to end: 1 s clips -> Whisper's own feature extractor -> the fused pair."""
    from transformers import WhisperFeatureExtractor

    check_adapter("seq2seq", "tiny-whisper", {**QUICK, "benchmark": False}, work_dir=tmp_path)
    rate = 16000
    time_axis = np.arange(rate) / rate
    clips = [np.sin(2 * np.pi * (200 + 900 * time_axis) * time_axis),  # a chirp
             0.3 * np.sin(2 * np.pi * 440 * time_axis) + 0.05 * np.random.default_rng(0).standard_normal(rate)]
    extractor = WhisperFeatureExtractor(feature_size=16, sampling_rate=rate, hop_length=160, chunk_length=1, n_fft=400)
    features = extractor(clips, sampling_rate=rate, return_tensors="np").input_features.astype(np.float32)
    assert features.shape == (2, 16, 100)  # the tiny model's 50 encoder positions after the stride-2 conv
    pair = EncoderDecoder(tmp_path / "run" / "encoder.opt.onnx", tmp_path / "run" / "decoder.opt.onnx")
    source = load_source("tiny-whisper")
    for beams in (1, 4):
        want = generate_torch(source, {"input_features": features}, 16, num_beams=beams)
        np.testing.assert_array_equal(pair.generate({"input_features": features}, 16, num_beams=beams), want)


def test_gptq_rounding_needs_a_model_trained_here(tmp_path):
    result = CliRunner().invoke(main, ["run", "--plugin", "seq2seq", "--model", "tiny-t5", "--exporter", "legacy",
                                       "--precision", "int4", "--option", "weight_rounding=gptq", "--no-benchmark",
                                       "--output", str(tmp_path / "out")])
    assert result.exit_code != 0 and "weight_rounding=gptq needs calibration text" in result.output
