"""scripts/evaluate_qat_unseen.py: the unseen split is what the default run never trained on, and the sign test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "evaluate_qat_unseen.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("evaluate_qat_unseen", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sign_test(script):
    assert script.sign_test_p(5, 5) == 1.0
    assert script.sign_test_p(10, 0) == pytest.approx(2 / 1024)
    assert script.sign_test_p(0, 0) == 1.0
    assert script.sign_test_p(73, 58) == pytest.approx(script.sign_test_p(58, 73))


def test_unseen_split_holds_no_training_example(script):
    from tfopt_qat.train import TrainConfig, prepare

    from collections import Counter

    from tfopt_qat.data import load_dataset

    config = TrainConfig.from_options(None, {})
    prepared, held_out, never_drawn = script.unseen_split(config)
    trained_on = prepare(config).dataset.train_texts
    unseen = prepared.dataset.eval_texts
    full = load_dataset(None, max_examples=0)
    every = Counter(full.train_texts + full.eval_texts)
    assert held_out == round(config.max_examples * config.eval_fraction)
    assert len(unseen) == len(prepared.dataset.eval_labels) == held_out + never_drawn
    assert len(trained_on) + len(unseen) == sum(every.values())  # every snippet: trained on or scored, once
    # a text in both is one the data file holds more than once (the split is by example, not by text)
    assert all(every[text] > 1 for text in set(trained_on) & set(unseen))
