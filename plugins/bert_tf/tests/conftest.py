"""Shared, session-scoped TF fixtures: importing TF, building and converting models take seconds each,
so every test reuses one tiny model, one SavedModel and one export per source kind."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from tfopt.results import ExportResult, RunContext  # noqa: E402


def run_context(source, work_dir: Path, **options) -> RunContext:
    return RunContext(family="bert_tf", source=str(source) if source is not None else None, work_dir=work_dir, options=options)


@pytest.fixture
def tf_run_context():
    """Factory: a fresh RunContext for the bert_tf adapter (test modules cannot import conftest reliably)."""
    return run_context


@pytest.fixture(scope="session")
def tiny_hf_model():
    from tfopt_bert_tf.models import TINY_CONFIG, random_tf_bert

    return random_tf_bert(**TINY_CONFIG)


@pytest.fixture(scope="session")
def hf_saved_dir(tiny_hf_model, tmp_path_factory) -> Path:
    """What Hugging Face users have: save_pretrained(saved_model=True) -> config.json, tf_model.h5, saved_model/1/."""
    directory = tmp_path_factory.mktemp("hf_tiny_bert")
    tiny_hf_model.save_pretrained(str(directory), saved_model=True)
    return directory


@pytest.fixture(scope="session")
def savedmodel_run(hf_saved_dir, tmp_path_factory) -> tuple[RunContext, ExportResult]:
    import tfopt_bert_tf

    ctx = run_context(hf_saved_dir / "saved_model" / "1", tmp_path_factory.mktemp("savedmodel_run"))
    return ctx, tfopt_bert_tf.export_hook(ctx)


@pytest.fixture(scope="session")
def hf_dir_run(hf_saved_dir, tmp_path_factory) -> tuple[RunContext, ExportResult]:
    import tfopt_bert_tf

    ctx = run_context(hf_saved_dir, tmp_path_factory.mktemp("hf_dir_run"))
    return ctx, tfopt_bert_tf.export_hook(ctx)
