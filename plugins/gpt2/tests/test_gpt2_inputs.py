"""make_dummy_inputs: decoding steps that look like generation's, left padding, positions from the mask."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2_cases import make_ctx
from tfopt.errors import TfoptError
from tfopt_gpt2.hooks import make_dummy_inputs_hook
from tfopt_gpt2.inputs import DEFAULT_CASES, position_ids_for, shape_of


@pytest.fixture(scope="module")
def exported(exported_variant):
    return exported_variant("tiny-gpt2", "legacy")[1]


def _feeds(tmp_path, exported, **options):
    return make_dummy_inputs_hook(make_ctx(tmp_path, "tiny-gpt2", **options), exported)


def test_default_cases_cover_the_ranges(tmp_path, exported):
    feeds = _feeds(tmp_path, exported)
    assert len(feeds) == DEFAULT_CASES
    shapes = [shape_of(feed) for feed in feeds]
    assert {s.batch_size for s in shapes} <= set(range(1, 9)) and {1, 8} <= {s.batch_size for s in shapes}
    assert all(0 <= s.past_length <= 16 and 1 <= s.sequence_length <= 16 for s in shapes)
    assert any(s.past_length == 0 and s.sequence_length > 1 for s in shapes)  # the prompt step
    assert any(s.past_length == 0 and s.sequence_length == 1 for s in shapes)
    assert any(s.past_length > 0 and s.sequence_length == 1 for s in shapes)  # decode steps
    assert any(s.past_length > 0 and s.sequence_length > 1 for s in shapes)
    assert len(set(shapes)) > DEFAULT_CASES // 2  # random, not one shape repeated


def test_masks_are_left_padded_with_varied_padding_and_positions_follow(tmp_path, exported):
    feeds = _feeds(tmp_path, exported, cases=40)
    padded_rows = 0
    for feed in feeds:
        shape = shape_of(feed)
        mask = feed["attention_mask"]
        assert mask.shape == (shape.batch_size, shape.total_length) and set(np.unique(mask)) <= {0, 1}
        assert (mask[:, -1] == 1).all()  # every row's newest token is real
        assert (np.diff(mask, axis=1) >= 0).all()  # zeros only before ones: left padding
        pads = (mask == 0).sum(axis=1)
        assert pads[0] == 0
        padded_rows += int((pads > 0).sum())
        expected = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, -shape.sequence_length :]
        np.testing.assert_array_equal(feed["position_ids"], expected)
        assert (feed["input_ids"] >= 0).all() and (feed["input_ids"] < 160).all()
        for i in range(3):
            for kind in ("key", "value"):
                past = feed[f"past_key_values.{i}.{kind}"]
                assert past.shape == (shape.batch_size, 4, shape.past_length, 8) and past.dtype == np.float32
    assert padded_rows > 20
    rows_with_distinct_padding = [f for f in feeds if len(set((f["attention_mask"] == 0).sum(axis=1))) > 2]
    assert rows_with_distinct_padding  # padding varies from row to row, not one amount per batch
    pasts = np.concatenate([f["past_key_values.0.key"].ravel() for f in feeds])
    assert abs(pasts.mean()) < 0.05 and 0.9 < pasts.std() < 1.1  # random normal


def test_position_ids_count_real_tokens_only():
    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
    np.testing.assert_array_equal(position_ids_for(mask, 4), [[0, 1, 2, 3], [0, 0, 0, 1], [0, 0, 1, 2]])
    np.testing.assert_array_equal(position_ids_for(mask, 1), [[3], [1], [2]])


def test_cases_option_and_reproducibility(tmp_path, exported):
    many = _feeds(tmp_path, exported, cases=300)
    assert len(many) == 300 and {shape_of(f).batch_size for f in many} == set(range(1, 9))
    again = _feeds(tmp_path, exported, cases=300)
    assert all(np.array_equal(a["attention_mask"], b["attention_mask"]) for a, b in zip(many, again))
    other_seed = _feeds(tmp_path, exported, cases=300, seed=1)
    assert [shape_of(f) for f in other_seed] != [shape_of(f) for f in many]


def test_grid_options_and_int32(tmp_path, exported):
    feeds = _feeds(tmp_path, exported, batch_sizes=[2, 3], past_lengths="0,5", sequence_lengths=[1, 4], input_int32=True)
    assert [(s.batch_size, s.past_length, s.sequence_length) for s in map(shape_of, feeds)] == [
        (b, p, s) for b in (2, 3) for p in (0, 5) for s in (1, 4)
    ]
    assert all(f[name].dtype == np.int32 for f in feeds for name in ("input_ids", "attention_mask", "position_ids"))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"past_lengths": [-1]}, "past_lengths must be integers >= 0"),
        ({"batch_sizes": [0]}, "batch_sizes must be positive integers"),
        ({"past_lengths": [100], "sequence_lengths": [40]}, "exceeds tiny-gpt2's 128 positions"),
        ({"cases": 0}, "cases must be a positive integer"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, exported, options, message):
    with pytest.raises(TfoptError, match=message):
        _feeds(tmp_path, exported, **options)
