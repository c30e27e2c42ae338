"""Datasets: CSV/JSONL reading, the seeded split, the default real corpus, one-line errors for bad data."""

from __future__ import annotations

import json

import pytest

from qat_cases import easy_rows, write_csv
from tfopt.errors import TfoptError
from tfopt_qat.data import load_dataset


def test_csv_split_is_seeded_stratified_and_disjoint(tmp_path):
    path = write_csv(tmp_path / "d.csv", easy_rows(100))
    a = load_dataset(path, eval_fraction=0.2, seed=3)
    b = load_dataset(path, eval_fraction=0.2, seed=3)
    c = load_dataset(path, eval_fraction=0.2, seed=4)
    assert (a.train_texts, a.eval_texts) == (b.train_texts, b.eval_texts)
    assert a.eval_texts != c.eval_texts
    assert len(a.eval_texts) == 20 and len(a.train_texts) == 80
    assert a.label_names == ("neg", "pos")
    assert sorted(a.eval_labels).count(0) == 10  # both classes, balanced, in the held-out split
    rows = {(r["text"], r["label"]) for r in easy_rows(100)}
    names = a.label_names
    assert {(t, names[l]) for t, l in zip(a.train_texts + a.eval_texts, a.train_labels + a.eval_labels)} <= rows


def test_jsonl_and_other_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"sentence": r["text"], "y": 1 if r["label"] == "pos" else 0}) + "\n" for r in easy_rows(40)))
    data = load_dataset(path, text_column="sentence", label_column="y", eval_fraction=0.25)
    assert data.label_names == ("0", "1") and data.num_labels == 2 and len(data.eval_texts) == 10


def test_max_examples_keeps_both_classes(tmp_path):
    data = load_dataset(write_csv(tmp_path / "d.csv", easy_rows(200)), max_examples=20, eval_fraction=0.5)
    assert len(data.train_texts) + len(data.eval_texts) == 20
    assert set(data.eval_labels) == {0, 1} and set(data.train_labels) == {0, 1}


def test_default_dataset_is_real_labelled_text():
    data = load_dataset(None, max_examples=400, eval_fraction=0.25)
    assert data.label_names == ("rotten", "fresh")
    assert len(data.eval_texts) == 100 and set(data.eval_labels) == {0, 1}
    assert sorted(len(text.split()) for text in data.train_texts)[150] >= 10  # sentences (median), not tokens
    full = load_dataset(None, max_examples=0)
    assert len(full.train_texts) + len(full.eval_texts) == 4866  # 2455 fresh + 2411 rotten snippets


@pytest.mark.parametrize(
    "content, name, options, message",
    [
        ("", "empty.csv", {}, "holds no examples"),
        ("text,label\n", "header.csv", {}, "holds no examples"),
        ("sentence,label\na,1\nb,0\n", "col.csv", {}, "no column 'text'"),
        ("text,label\na,1\nb,0\n", "lab.csv", {"label_column": "y"}, "no column 'y'"),
        ("text,label\na,1\nb,1\nc,1\n", "one.csv", {}, "one class only"),
        ("text,label\na,1\n,0\n", "blank.csv", {}, "example 2 has an empty"),
        ("text,label\na,1\nb,0\n", "few.csv", {"eval_fraction": 0.5}, "too few"),
        ('{"text": "a", "label": 1}\n[1, 2]\n', "bad.jsonl", {}, "must be an object"),
        ('{"text": "a", "label": 1\n', "broken.jsonl", {}, "cannot read"),
        ("text,label\na,1\n", "d.parquet", {}, "unknown data format"),
    ],
)
def test_bad_datasets_are_one_line_errors(tmp_path, content, name, options, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TfoptError) as info:
        load_dataset(path, **options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(TfoptError, match="no such data file"):
        load_dataset(tmp_path / "nope.csv")
