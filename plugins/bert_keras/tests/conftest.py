"""Shared, session-scoped Keras fixtures: one tiny keras-hub backbone (and its .keras file), one tiny
Hugging Face TF BERT, one export each, reused by every test."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("keras_hub")
pytest.importorskip("tf2onnx")

from tfopt.results import ExportResult, RunContext  # noqa: E402


def keras_context(source, work_dir: Path, **options) -> RunContext:
    return RunContext(family="bert_keras", source=str(source) if source is not None else None, work_dir=work_dir, options=options)


@pytest.fixture
def keras_run_context():
    """Factory: a fresh RunContext for the bert_keras adapter (test modules cannot import conftest reliably)."""
    return keras_context


@pytest.fixture(scope="session")
def keras_file(tmp_path_factory) -> Path:
    from tfopt_bert_keras.models import TINY_BACKBONE, random_backbone

    path = tmp_path_factory.mktemp("keras_hub") / "tiny_bert_backbone.keras"
    random_backbone(**TINY_BACKBONE).save(str(path))
    return path


@pytest.fixture(scope="session")
def keras_hub_run(keras_file, tmp_path_factory) -> tuple[RunContext, ExportResult]:
    import tfopt_bert_keras

    ctx = keras_context(keras_file, tmp_path_factory.mktemp("keras_hub_run"))
    return ctx, tfopt_bert_keras.export_hook(ctx)


@pytest.fixture(scope="session")
def tiny_tf_bert():
    """A Hugging Face TFBertModel: a tf_keras (Keras 2) model."""
    from tfopt_bert_tf.models import TINY_CONFIG, random_tf_bert

    return random_tf_bert(**TINY_CONFIG)


@pytest.fixture(scope="session")
def hf_keras_run(tiny_tf_bert, tmp_path_factory) -> tuple[RunContext, ExportResult]:
    """The Hugging Face model handed over as an object."""
    import tfopt_bert_keras

    ctx = keras_context(None, tmp_path_factory.mktemp("hf_keras_run"))
    return ctx, tfopt_bert_keras.export_model(ctx, tiny_tf_bert, "tiny-tf-bert-object")
