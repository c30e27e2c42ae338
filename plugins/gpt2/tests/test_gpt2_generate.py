"""Greedy generation driven by the ONNX decoder step: PyTorch's tokens exactly, left padding and all."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2_cases import EXPORTERS
from tfopt.errors import TfoptError
from tfopt_gpt2.cache import source_model
from tfopt_gpt2.generate import example_prompts, greedy_generate_onnx, greedy_generate_torch

NEW_TOKENS = 16


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_raw_export_generates_pytorchs_tokens(exported_variant, exporter):
    ctx, exported = exported_variant("tiny-gpt2", exporter)
    source = source_model(ctx)
    input_ids, attention_mask = example_prompts(source, 4, 9, seed=2)
    assert len(set((attention_mask == 0).sum(axis=1))) > 2  # rows padded by different amounts
    expected = greedy_generate_torch(source, input_ids, attention_mask, NEW_TOKENS)
    actual = greedy_generate_onnx(exported.model_path, input_ids, attention_mask, NEW_TOKENS)
    assert actual.shape == (4, NEW_TOKENS) and actual.dtype == np.int64
    np.testing.assert_array_equal(actual, expected)
    assert len(np.unique(expected)) > 4  # the tiny model does not just repeat one token


def test_padded_rows_generate_as_if_alone(exported_variant):
    """Left padding must not change a row's tokens: each row alone, unpadded, gives the same ones."""
    ctx, exported = exported_variant("tiny-gpt2", "legacy")
    input_ids, attention_mask = example_prompts(source_model(ctx), 3, 8, seed=5)
    batched = greedy_generate_onnx(exported.model_path, input_ids, attention_mask, 10)
    for row in range(3):
        real = input_ids[row][attention_mask[row].astype(bool)][None, :]
        np.testing.assert_array_equal(greedy_generate_onnx(exported.model_path, real, None, 10)[0], batched[row])


def test_eos_stops_rows_on_both_sides(exported_variant):
    ctx, exported = exported_variant("tiny-gpt2", "legacy")
    source = source_model(ctx)
    input_ids, attention_mask = example_prompts(source, 3, 6, seed=1)
    free = greedy_generate_torch(source, input_ids, attention_mask, 8)
    eos = int(free[0, 2])  # row 0 emits it at step 3
    expected = greedy_generate_torch(source, input_ids, attention_mask, 8, eos_token_id=eos)
    actual = greedy_generate_onnx(exported.model_path, input_ids, attention_mask, 8, eos_token_id=eos)
    np.testing.assert_array_equal(actual, expected)
    assert (actual[0, 2:] == eos).all()


def test_session_can_be_passed_and_zero_tokens(exported_variant):
    from tfopt.bench import ort_session

    ctx, exported = exported_variant("tiny-gpt2", "legacy")
    input_ids, attention_mask = example_prompts(source_model(ctx), 2, 4)
    session = ort_session(exported.model_path)
    assert greedy_generate_onnx(session, input_ids, attention_mask, 0).shape == (2, 0)
    np.testing.assert_array_equal(
        greedy_generate_onnx(session, input_ids, attention_mask, 3),
        greedy_generate_onnx(exported.model_path, input_ids, attention_mask, 3),
    )


def test_refusals_are_one_line_errors(exported_variant):
    ctx, exported = exported_variant("tiny-gpt2", "legacy")
    right_padded = np.array([[1, 1, 0]])
    with pytest.raises(TfoptError, match="padded on the left"):
        greedy_generate_onnx(exported.model_path, np.array([[5, 6, 7]]), right_padded, 2)
    with pytest.raises(TfoptError, match="differs from input_ids shape"):
        greedy_generate_onnx(exported.model_path, np.array([[5, 6, 7]]), np.array([[1, 1]]), 2)
    base_ctx, base = exported_variant("tiny-gpt2-base", "legacy")
    with pytest.raises(TfoptError, match="needs a model whose first output is 'logits'"):
        greedy_generate_onnx(base.model_path, np.array([[5, 6]]), None, 2)
    with pytest.raises(TfoptError, match="needs a GPT2LMHeadModel"):
        greedy_generate_torch(source_model(base_ctx), np.array([[5, 6]]), None, 2)


class _RecordingBinding:
    """An IOBinding that records how each input was bound."""

    def __init__(self, binding, log):
        self._binding, self._log = binding, log

    def bind_ortvalue_input(self, name, value):
        self._log.append(("ortvalue", name, value.data_ptr()))
        return self._binding.bind_ortvalue_input(name, value)

    def bind_cpu_input(self, name, array):
        self._log.append(("numpy", name, None))
        return self._binding.bind_cpu_input(name, array)

    def __getattr__(self, name):
        return getattr(self._binding, name)


class _RecordingSession:
    def __init__(self, session):
        self._session, self.log, self.presents = session, [], []

    def io_binding(self):
        return _RecordingBinding(self._session.io_binding(), self.log)

    def run_with_iobinding(self, binding):
        self._session.run_with_iobinding(binding._binding)
        names = [o.name for o in self._session.get_outputs()]
        self.presents.append({n: v.data_ptr() for n, v in zip(names, binding._binding.get_outputs()) if n.startswith("present")})

    def __getattr__(self, name):
        return getattr(self._session, name)


def test_present_is_bound_as_next_past_without_a_copy(exported_variant):
    """From the second step on, every past input is the previous step's present OrtValue (same buffer)."""
    from tfopt.bench import ort_session

    ctx, exported = exported_variant("tiny-gpt2", "dynamo")
    input_ids, attention_mask = example_prompts(source_model(ctx), 2, 6, seed=1)
    session = _RecordingSession(ort_session(exported.model_path))
    tokens = greedy_generate_onnx(session, input_ids, attention_mask, 4)
    np.testing.assert_array_equal(tokens, greedy_generate_torch(source_model(ctx), input_ids, attention_mask, 4))
    pasts = [entry for entry in session.log if entry[1].startswith("past_key_values.")]
    layers = source_model(ctx).num_layers
    assert [kind for kind, _, _ in pasts[: 2 * layers]] == ["numpy"] * (2 * layers)  # the empty first past
    later = pasts[2 * layers :]
    assert len(later) == 3 * 2 * layers and all(kind == "ortvalue" for kind, _, _ in later)
    for step, start in enumerate(range(0, len(later), 2 * layers)):
        for _, name, pointer in later[start : start + 2 * layers]:
            assert pointer == session.presents[step][name.replace("past_key_values.", "present.")]
