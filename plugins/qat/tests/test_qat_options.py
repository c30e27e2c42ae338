"""qat's options are flags of `tfopt run --plugin qat` (``tfopt_options``), the same as TrainConfig's fields."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

import tfopt_qat
from qat_cases import TINY_OPTIONS
from tfopt.cli import main
from tfopt.errors import TfoptError
from tfopt_qat import hooks
from tfopt_qat import train as train_module

DECLARED = {option.name: option for option in tfopt_qat.tfopt_options}


def test_declared_options_are_the_training_fields_with_their_defaults():
    fields = {field.name: field.default for field in dataclasses.fields(train_module.TrainConfig) if field.name != "source"}
    assert {name: DECLARED[name].default for name in fields if name in DECLARED} == fields
    assert set(DECLARED) == {*fields, "accuracy_tolerance"}
    assert DECLARED["accuracy_tolerance"].default == hooks.DEFAULT_ACCURACY_TOLERANCE
    for name, default in fields.items():
        assert default is None or isinstance(default, DECLARED[name].type), name


def test_help_lists_them():
    text = CliRunner().invoke(main, ["run", "--plugin", "qat", "--help"]).stdout
    assert "Options of the qat adapter" in text
    assert "--data FILE" in text and "--accuracy-tolerance FLOAT" in text and "[default: 2000]" in text


def test_flags_and_option_pairs_give_the_same_training(tmp_path, monkeypatch):
    """`--data FILE --epochs 3 ...` and `--option data=FILE --option epochs=3 ...` train the same config."""
    seen = []

    def stop(config, *args, **kwargs):
        seen.append(config)
        raise TfoptError("stopped before training")

    monkeypatch.setattr(train_module, "train", stop)
    options = {**TINY_OPTIONS, "data": str(tmp_path / "reviews.csv"), "text_column": "review"}
    flags = [arg for key, value in options.items() for arg in (DECLARED[key].flag, str(value))]
    pairs = [arg for key, value in options.items() for arg in ("--option", f"{key}={value}")]
    for args in (flags, pairs, [*pairs, "--epochs", "5"]):
        result = CliRunner().invoke(main, ["-q", "export", "--plugin", "qat", "--model", "tiny-bert", "--output",
                                           str(tmp_path / "out"), *args])
        assert result.exit_code == 2 and "stopped before training" in result.stderr, result.output
    expected = train_module.TrainConfig.from_options("tiny-bert", options)
    assert seen[0] == expected and seen[1] == expected
    assert seen[2] == dataclasses.replace(expected, epochs=5)  # the explicit flag wins


@pytest.mark.parametrize("args", [("--epochs", "two"), ("--option", "lr=fast")])
def test_a_bad_value_is_one_line_before_anything_runs(tmp_path, args):
    result = CliRunner().invoke(main, ["run", "--plugin", "qat", "--output", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("tfopt: error: ")
    assert not (tmp_path / "out").exists()
