"""Sources: built-in random configs, local directories, hub ids (offline here), and what each yields."""

from __future__ import annotations

import socket
import time

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2LMHeadModel, GPT2Model

from tfopt.errors import TfoptError
from tfopt_gpt2.models import BUILTIN_MODELS, DEFAULT_SOURCE, load_source, random_model


@pytest.mark.parametrize(
    "name, model_class, layers, hidden, vocab",
    [
        ("tiny-gpt2", GPT2LMHeadModel, 3, 32, 160),
        ("tiny-gpt2-base", GPT2Model, 2, 48, 144),
        ("tiny-distilgpt2", GPT2LMHeadModel, 2, 64, 200),
    ],
)
def test_tiny_models(name, model_class, layers, hidden, vocab):
    source = load_source(name)
    assert type(source.model) is model_class and not source.model.training
    assert (source.info.model_type, source.info.num_heads, source.info.hidden_size, source.info.num_layers) == (
        "gpt2", 4, hidden, layers
    )
    assert source.vocab_size == vocab and source.max_positions == 128
    assert source.lm_head == (model_class is GPT2LMHeadModel)
    assert source.output_name == ("logits" if source.lm_head else "last_hidden_state")
    again = load_source(name)  # the same weights every time: export and verify may load separately
    assert all(torch.equal(a, b) for a, b in zip(source.model.state_dict().values(), again.model.state_dict().values()))


def test_default_is_tiny_gpt2_with_random_weights():
    assert DEFAULT_SOURCE == "tiny-gpt2" and load_source(None).name == "tiny-gpt2"


def test_vector_params_are_distinct():
    """Identical biases/LayerNorm weights would be merged by the dynamo exporter into one initializer."""
    vectors = [p.detach().clone() for p in load_source("tiny-gpt2").model.parameters() if p.dim() == 1]
    assert len(vectors) > 10
    assert not any(torch.equal(a, b) for i, a in enumerate(vectors) for b in vectors[i + 1 :] if a.shape == b.shape)


def test_gpt2_small_random_has_gpt2_smalls_shape():
    config = BUILTIN_MODELS["gpt2-small-random"].config()
    assert (config.n_layer, config.n_embd, config.n_head, config.vocab_size, config.n_positions) == (12, 768, 12, 50257, 1024)
    assert BUILTIN_MODELS["gpt2-small-random"].lm_head


@pytest.mark.parametrize("lm_head", [True, False])
def test_local_directory_follows_its_architecture(tmp_path, lm_head):
    random_model(BUILTIN_MODELS["tiny-gpt2"].config(), lm_head=lm_head).save_pretrained(tmp_path)
    source = load_source(str(tmp_path))
    assert source.lm_head is lm_head and source.name == str(tmp_path) and source.info.num_layers == 3
    assert load_source(str(tmp_path), lm_head=not lm_head).lm_head is (not lm_head)  # the option overrides


def test_attention_implementation_is_applied_and_checked():
    assert load_source("tiny-gpt2", attn_implementation="eager").model.config._attn_implementation == "eager"
    with pytest.raises(TfoptError, match="unknown attn_implementation 'flash'"):
        load_source("tiny-gpt2", attn_implementation="flash")


@pytest.mark.parametrize(
    "source, message",
    [
        ("openai-community/gpt2", "the Hugging Face hub is offline"),
        ("gpt2", "the Hugging Face hub is offline"),
        ("./no/such/dir", "no such model directory"),
        ("model.onnx", "no such model directory"),
    ],
)
def test_unreachable_sources_are_one_line_errors(source, message):
    with pytest.raises(TfoptError, match=message) as error:
        load_source(source)
    assert "\n" not in str(error.value)


def test_unknown_name_with_the_hub_unreachable_fails_in_seconds(monkeypatch):
    from tfopt import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    with socket.socket() as unused:  # bound, not listening: the "hub" refuses connections
        unused.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{unused.getsockname()[1]}")
        start = time.perf_counter()
        with pytest.raises(TfoptError) as error:
            load_source("someone/gpt2-finetune")
        assert time.perf_counter() - start < 5
    assert str(error.value).startswith(
        f"someone/gpt2-finetune: not a directory, not a built-in name ({', '.join(BUILTIN_MODELS)}), "
        "and the Hugging Face hub is not reachable"
    )


def test_directories_that_are_not_gpt2_are_refused(tmp_path):
    with pytest.raises(TfoptError, match="no config.json"):
        load_source(str(tmp_path))
    bert = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(bert).save_pretrained(tmp_path)
    with pytest.raises(TfoptError, match="model type 'bert' is not handled by the gpt2 adapter"):
        load_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TfoptError, match="cannot read config.json"):
        load_source(str(tmp_path))
