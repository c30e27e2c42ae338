"""Model sources: built-in tiny configs, local directories, hub ids, the real-weight default, and bad input."""

from __future__ import annotations

import json
import time

import pytest
import torch

from bert_pt_cases import EAGER_ONLY, TINY_MODELS
from tfopt.errors import TfoptError
from tfopt.graph import MODEL_TYPES
from tfopt.results import ModelInfo
from tfopt_bert_pt import models
from tfopt_bert_pt.models import load_source


TFOPT_TYPE = {"tiny-deberta-v2": "deberta", "tiny-deberta-v3": "deberta"}  # HF's deberta-v2 is tfopt's deberta


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_models_are_small_deterministic_and_perturbed(name):
    first = load_source(name)
    again = load_source(name, attn_implementation="eager")
    info = first.info
    assert info.model_type == TFOPT_TYPE.get(name, name.removeprefix("tiny-"))
    assert info.model_type in MODEL_TYPES  # the host has expected counts for it
    assert info.num_heads == 4 and 32 <= info.hidden_size <= 64 and 2 <= info.num_layers <= 3
    assert 100 <= first.vocab_size <= 200
    # the default attention: sdpa where transformers has it for the model, else eager
    assert first.model.config._attn_implementation == ("eager" if name in EAGER_ONLY else "sdpa")
    assert again.model.config._attn_implementation == "eager"
    # Same weights every time: verify rebuilds the model export saw.
    for (key, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), key
    # No two 1-D parameters identical, none all zeros or all ones (the dynamo exporter would merge them).
    vectors = [p for p in first.model.parameters() if p.dim() == 1]
    assert vectors
    for p in vectors:
        assert not torch.all(p == 0) and not torch.all(p == 1)
    assert len({tuple(p.tolist()) for p in vectors}) == len(vectors)


def test_albert_embedding_width_differs_from_hidden():
    config = load_source("tiny-albert").model.config
    assert config.embedding_size != config.hidden_size


@pytest.mark.parametrize(
    ("name", "segments"), [(name, name in ("tiny-bert", "tiny-albert", "tiny-electra")) for name in TINY_MODELS]
)
def test_input_names_follow_the_model(name, segments):
    expected = ("input_ids", "attention_mask") + (("token_type_ids",) if segments else ())
    assert load_source(name).input_names == expected


@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-electra", "tiny-xlm-roberta", "tiny-mpnet", "tiny-deberta-v3", "tiny-modernbert"])
def test_local_directory_round_trip(tmp_path, name):
    original = load_source(name)
    original.model.save_pretrained(tmp_path)
    loaded = load_source(str(tmp_path), attn_implementation="eager")
    assert loaded.info == original.info
    assert loaded.input_names == original.input_names
    assert loaded.model.config._attn_implementation == "eager"
    assert loaded.pad_token_id == original.pad_token_id
    assert loaded.max_sequence_length == original.max_sequence_length == 64
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    with torch.inference_mode():
        expected = original.model(input_ids=ids, attention_mask=mask).last_hidden_state
        actual = loaded.model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(actual[:, :5], expected[:, :5], atol=1e-5, rtol=0)


def test_local_deberta_v2_directory_is_tfopts_deberta_with_eager_attention(tmp_path):
    load_source("tiny-deberta-v2").model.save_pretrained(tmp_path)
    loaded = load_source(str(tmp_path))  # no attention named: DeBERTa-v2 has only eager
    assert loaded.model.config.model_type == "deberta-v2" and loaded.info.model_type == "deberta"
    assert loaded.model.config._attn_implementation == "eager"


@pytest.mark.parametrize("name", EAGER_ONLY)
def test_sdpa_on_an_eager_only_model_is_one_line_error(name):
    message = _one_line_error(name, attn_implementation="sdpa")
    assert "has no sdpa attention" in message and "eager" in message


def test_default_source_is_the_real_minilm():
    start = time.perf_counter()
    source = load_source(None)
    seconds = time.perf_counter() - start
    assert source.info == ModelInfo(model_type="bert", num_heads=12, hidden_size=384, num_layers=6)
    assert source.name == "all-MiniLM-L6-v2"
    assert source.vocab_size == 30522 and source.input_names == ("input_ids", "attention_mask", "token_type_ids")
    # Trained weights, not a random init: LayerNorm gains are far from their init value of 1.
    gamma = source.model.embeddings.LayerNorm.weight.detach()
    assert float((gamma - 1).abs().mean()) > 0.05
    assert seconds < 30


def _one_line_error(source, **kwargs) -> str:
    with pytest.raises(TfoptError) as error:
        load_source(source, **kwargs)
    message = str(error.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def test_missing_directory(tmp_path):
    message = _one_line_error(str(tmp_path / "nowhere" / "model"))
    assert "no such model directory" in message and "tiny-bert" in message


def test_directory_without_config(tmp_path):
    assert "no config.json" in _one_line_error(str(tmp_path))


def test_file_instead_of_directory(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0")
    assert "not a directory" in _one_line_error(str(path))


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    assert "cannot read config.json" in _one_line_error(str(tmp_path))


def test_config_without_weights(tmp_path):
    load_source("tiny-bert").model.config.save_pretrained(tmp_path)
    assert "cannot load the model weights" in _one_line_error(str(tmp_path))


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    message = _one_line_error(str(tmp_path))
    assert "'gpt2' is not handled by bert_pt" in message
    assert "deberta-v2" in message and "modernbert" in message  # the message lists what it handles


def test_unreadable_directory(tmp_path, monkeypatch):
    load_source("tiny-bert").model.save_pretrained(tmp_path)
    # chmod does not stop root, so simulate the permission check failing.
    import tfopt.hub

    monkeypatch.setattr(tfopt.hub.os, "access", lambda path, mode: False)
    assert "not readable" in _one_line_error(str(tmp_path))


def test_hub_id_while_offline():
    message = _one_line_error("sentence-transformers/all-MiniLM-L6-v2")
    assert "offline" in message


def test_missing_realweights_package(monkeypatch):
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == models.REALWEIGHTS_PACKAGE else real_find_spec(name, *a)
    )
    message = _one_line_error(None)
    assert "tfopt-bert-pt[realweights]" in message


def test_unknown_attention_implementation():
    assert "flash_attention_2" in _one_line_error("tiny-bert", attn_implementation="flash_attention_2")


def test_random_bert_shape_for_benchmarks():
    model = models.random_bert(num_layers=1, hidden_size=48, num_heads=6, attn_implementation="eager")
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads) == (1, 48, 6)
    assert model.config._attn_implementation == "eager" and not model.training
