"""Training: resuming from a partial checkpoint, fp32-only runs, and torchrun with 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qat_cases import TINY_OPTIONS, easy_rows, write_csv
from tfopt_qat import train as train_module
from tfopt_qat.train import TrainConfig, final_checkpoint, train


@pytest.fixture(scope="module")
def easy_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "easy.csv", easy_rows(240))


def _config(data: Path, **changes) -> TrainConfig:
    return TrainConfig.from_options("tiny-bert", {**TINY_OPTIONS, "data": str(data), "epochs": 1, **changes})


def test_an_interrupted_stage_resumes_to_the_same_weights(easy_csv, tmp_path, monkeypatch):
    config = _config(easy_csv, checkpoint_every=3)
    reference = train(config, tmp_path / "straight", with_qat=False).fp32.state_dict()

    real_checkpoint = train_module._checkpoint_partial

    def checkpoint_then_stop(*args, **kwargs):
        real_checkpoint(*args, **kwargs)
        raise KeyboardInterrupt  # the run dies right after its first partial checkpoint (step 3)

    monkeypatch.setattr(train_module, "_checkpoint_partial", checkpoint_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", with_qat=False)
    partial = tmp_path / "resumed" / "qat-checkpoints" / "fp32.partial.pt"
    assert torch.load(partial, weights_only=False)["step"] == 3
    monkeypatch.undo()
    messages = []
    resumed = train(config, tmp_path / "resumed", messages.append, with_qat=False).fp32.state_dict()
    assert any("resuming from step 3/" in m for m in messages), messages
    assert not partial.exists() and final_checkpoint(tmp_path / "resumed", "fp32").is_file()
    for name, value in reference.items():
        assert torch.allclose(value, resumed[name], atol=1e-6), name

    messages.clear()  # a finished stage is loaded, not trained again
    train(config, tmp_path / "resumed", messages.append, with_qat=False)
    assert any("fine-tuned model found" in m for m in messages)
    messages.clear()  # other settings: not resumed from that checkpoint
    train(_config(easy_csv, checkpoint_every=3, lr=1e-3, max_examples=40), tmp_path / "resumed", messages.append, with_qat=False)
    assert not any("found" in m or "resuming" in m for m in messages)


def test_qat_starts_from_the_fine_tuned_model_without_loading_the_source_again(easy_csv, tmp_path, monkeypatch):
    """One load of the source per train(): the QAT model is the fine-tuned fp32 model, wrapped, not a second load."""
    from tfopt_qat.fakequant import strip_qat

    loads = []
    real_build = train_module.build_model
    monkeypatch.setattr(train_module, "build_model", lambda source: loads.append(source.name) or real_build(source))
    starts = {}
    real_stage = train_module._train_stage

    def record_start(stage, model, *args, **kwargs):
        starts[stage] = strip_qat(model).state_dict()  # a copy, taken before the stage trains
        return real_stage(stage, model, *args, **kwargs)

    monkeypatch.setattr(train_module, "_train_stage", record_start)
    config = _config(easy_csv, max_examples=64)
    run = train(config, tmp_path)
    assert loads == ["tiny-bert"] and set(starts) == {"fp32", "qat"}
    fine_tuned = run.fp32.state_dict()
    assert set(starts["qat"]) == set(fine_tuned)
    for name, value in fine_tuned.items():
        assert torch.equal(starts["qat"][name], value), name
    assert any(not torch.equal(starts["fp32"][name], value) for name, value in fine_tuned.items())  # fp32 did train

    loads.clear()  # finished checkpoints: the source is built once and both stages come from their files
    again = train(config, tmp_path)
    assert loads == ["tiny-bert"]
    for name, value in run.qat.state_dict().items():
        assert torch.equal(again.qat.state_dict()[name], value), name


def _train_cli(args: list[str], output: Path, easy_csv: Path, processes: int) -> list[dict]:
    options = {**TINY_OPTIONS, "data": str(easy_csv)}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(
        launcher + ["-m", "tfopt_qat.train", "--model", "tiny-bert", "--output", str(output), *flags, *args],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_torchrun_two_processes_match_one(easy_csv, tmp_path):
    one = _train_cli([], tmp_path / "one", easy_csv, 1)
    two = _train_cli([], tmp_path / "two", easy_csv, 2)
    assert [r["world_size"] for r in one + two] == [1, 1, 2, 2]
    for single, double in zip(one, two):
        assert single["model"] == double["model"]
        assert single["accuracy"] >= 0.9  # learned
        assert abs(single["accuracy"] - double["accuracy"]) <= 0.02, (single, double)  # one example of 60
    # same global batch, same steps: the fp32 weights agree up to float summation order
    a = torch.load(final_checkpoint(tmp_path / "one", "fp32"), weights_only=False)["model"]
    b = torch.load(final_checkpoint(tmp_path / "two", "fp32"), weights_only=False)["model"]
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-3, worst


def test_bad_training_options_are_one_line_errors(easy_csv):
    from tfopt.errors import TfoptError

    with pytest.raises(TfoptError, match="expected int"):
        TrainConfig.from_options(None, {"epochs": "many"})
    with pytest.raises(TfoptError, match="batch_size >= 1"):
        TrainConfig.from_options(None, {"batch_size": 0})


def test_hugging_face_directory_source(easy_csv, tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification, GPT2Config

    from tfopt.errors import TfoptError
    from tfopt_qat.model import realweights_dir, resolve_source, tiny_config

    directory = tmp_path / "my-bert"
    BertForSequenceClassification(tiny_config(3, 30522)).save_pretrained(directory)  # a 3-label head: replaced
    AutoTokenizer.from_pretrained(realweights_dir()).save_pretrained(directory)
    run = train(TrainConfig.from_options(str(directory), {**TINY_OPTIONS, "data": str(easy_csv), "epochs": 1, "max_examples": 64}),
                tmp_path / "out", with_qat=False)
    assert run.fp32.config.num_labels == 2 and run.prepared.source.name == str(directory)
    with pytest.raises(TfoptError, match="not a Hugging Face model directory"):
        resolve_source(str(tmp_path), 2)
    GPT2Config().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(TfoptError, match="model type 'gpt2' is not handled by qat"):
        resolve_source(str(tmp_path / "gpt2"), 2)
