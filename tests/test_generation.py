"""The shared generation loop's token choice: greedy, temperature, top-k and top-p, seeded.

The loop itself (IO binding, cache handling) is checked against transformers' ``generate``
in the gpt2 and llama adapters' tests; here the filters are checked against their
definitions on hand-made logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from tfopt.errors import TfoptError
from tfopt.generation import Sampling, _filtered_probabilities, left_padded, next_tokens

LOGITS = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))


def test_greedy_takes_the_most_likely_token():
    assert next_tokens(LOGITS, Sampling(), np.random.default_rng(0)).tolist() == [0, 3]


def test_top_k_keeps_the_k_most_likely_renormalized():
    probabilities = _filtered_probabilities(LOGITS, Sampling(do_sample=True, top_k=2))
    np.testing.assert_allclose(probabilities[0], [0.5 / 0.8, 0.3 / 0.8, 0, 0])
    np.testing.assert_allclose(probabilities[1], [0, 0, 0.3 / 0.8, 0.5 / 0.8])


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: two tokens stay; p = 0.5 keeps only the first
    np.testing.assert_allclose(_filtered_probabilities(LOGITS, Sampling(do_sample=True, top_p=0.7))[0], [0.625, 0.375, 0, 0])
    np.testing.assert_allclose(_filtered_probabilities(LOGITS, Sampling(do_sample=True, top_p=0.5))[0], [1, 0, 0, 0])


def test_temperature_sharpens_and_flattens():
    cold = _filtered_probabilities(LOGITS, Sampling(do_sample=True, temperature=0.5))[0]
    expected = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
    np.testing.assert_allclose(cold, expected / expected.sum())


def test_sampling_follows_the_distribution_and_the_seed():
    sampling = Sampling(do_sample=True, seed=3)
    draws = np.concatenate([next_tokens(np.repeat(LOGITS[:1], 1000, axis=0), sampling, np.random.default_rng(seed)) for seed in range(4)])
    frequencies = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(frequencies, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    first, again = (next_tokens(LOGITS, sampling, np.random.default_rng(9)) for _ in range(2))
    assert first.tolist() == again.tolist()


def test_top_k_one_is_greedy():
    tokens = next_tokens(LOGITS, Sampling(do_sample=True, top_k=1), np.random.default_rng(0))
    assert tokens.tolist() == [0, 3]


def test_prompts_are_left_padded_into_one_batch():
    ids, mask = left_padded([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(TfoptError, match="at least one token"):
        left_padded([[1], []])


def test_bad_sampling_settings_are_refused():
    with pytest.raises(TfoptError, match="temperature > 0"):
        Sampling(do_sample=True, temperature=0)
