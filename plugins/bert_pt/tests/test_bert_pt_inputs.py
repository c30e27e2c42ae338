"""make_dummy_inputs: realistic token feeds over a grid of shapes, with padding."""

from __future__ import annotations

import numpy as np
import pytest

from bert_pt_cases import make_ctx
from tfopt.errors import TfoptError
from tfopt.results import ExportResult, IOSpec, ModelInfo
from tfopt_bert_pt.cache import source_model
from tfopt_bert_pt.hooks import make_dummy_inputs_hook
from tfopt_bert_pt.inputs import dummy_inputs


def _exported(names, dtype="int64", model_type="bert") -> ExportResult:
    """Only the IO spec matters to make_dummy_inputs; no export needed."""
    return ExportResult(model_path=None, io=IOSpec(inputs={n: dtype for n in names}, outputs=["last_hidden_state"]), info=ModelInfo(model_type))


BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def test_default_grid_and_properties(tmp_path):
    ctx = make_ctx(tmp_path, "tiny-bert")
    feeds = make_dummy_inputs_hook(ctx, _exported(BERT_INPUTS))
    source = source_model(ctx)
    shapes = [feed["input_ids"].shape for feed in feeds]
    assert shapes == [(b, s) for b in (1, 2, 4) for s in (8, 16, 32)]
    padded_rows = full_rows = 0
    for feed in feeds:
        assert list(feed) == list(BERT_INPUTS)
        assert all(value.dtype == np.int64 and value.shape == feed["input_ids"].shape for value in feed.values())
        ids, mask, segments = feed["input_ids"], feed["attention_mask"].astype(bool), feed["token_type_ids"]
        assert set(np.unique(mask.astype(int))) <= {0, 1}
        assert ids.min() >= 0 and ids.max() < source.vocab_size
        assert not np.any(ids[mask] == source.pad_token_id)  # real tokens are never the pad id
        assert np.all(ids[~mask] == source.pad_token_id)
        for row_mask, row_segments in zip(mask, segments):
            length = int(row_mask.sum())
            assert length >= 1 and row_mask[:length].all()  # right padding: valid tokens first
            full_rows += length == len(row_mask)
            padded_rows += length < len(row_mask)
            assert set(np.unique(row_segments[:length])) == ({0, 1} if length > 1 else {0})
            assert np.all(np.diff(row_segments[:length]) >= 0)  # segment A, then segment B
            assert not row_segments[length:].any()
        if len(mask) > 1:
            lengths = mask.sum(axis=1)
            assert lengths[0] == mask.shape[1] and len(set(lengths)) == len(lengths)  # one full row, all lengths differ
    assert full_rows and padded_rows


def test_grid_options_and_int32(tmp_path):
    # as `--option sequence_lengths=4,9` may arrive: a string
    ctx = make_ctx(tmp_path, "tiny-distilbert", batch_sizes=[3], sequence_lengths="4,9", input_int32=True)
    feeds = make_dummy_inputs_hook(ctx, _exported(("input_ids", "attention_mask"), model_type="distilbert"))
    assert [feed["input_ids"].shape for feed in feeds] == [(3, 4), (3, 9)]
    assert all(list(feed) == ["input_ids", "attention_mask"] for feed in feeds)
    assert all(value.dtype == np.int32 for feed in feeds for value in feed.values())


def test_int32_graph_inputs_get_int32_feeds(tmp_path):
    feeds = make_dummy_inputs_hook(make_ctx(tmp_path, "tiny-bert", batch_sizes=[1], sequence_lengths=[4]), _exported(BERT_INPUTS, "int32"))
    assert all(value.dtype == np.int32 for value in feeds[0].values())


def test_roberta_never_uses_its_pad_id_for_tokens(tmp_path):
    ctx = make_ctx(tmp_path, "tiny-roberta", batch_sizes=[4], sequence_lengths=[32])
    (feed,) = make_dummy_inputs_hook(ctx, _exported(("input_ids", "attention_mask"), model_type="roberta"))
    assert source_model(ctx).pad_token_id == 1
    mask = feed["attention_mask"].astype(bool)
    assert not np.any(feed["input_ids"][mask] == 1) and np.all(feed["input_ids"][~mask] == 1)


def test_sequence_longer_than_positions_is_refused(tmp_path):
    ctx = make_ctx(tmp_path, "tiny-bert", sequence_lengths=[65])
    with pytest.raises(TfoptError, match="sequence length 65 exceeds tiny-bert's maximum of 64"):
        make_dummy_inputs_hook(ctx, _exported(BERT_INPUTS))


def test_reproducible_and_covering_the_vocabulary():
    kwargs = dict(vocab_size=50, pad_token_id=0, batch_sizes=(2,), sequence_lengths=(6,))
    first, second = dummy_inputs(BERT_INPUTS, **kwargs), dummy_inputs(BERT_INPUTS, **kwargs)
    assert all(np.array_equal(first[0][n], second[0][n]) for n in BERT_INPUTS)
    ids = dummy_inputs(["input_ids"], vocab_size=7, pad_token_id=3, batch_sizes=(64,), sequence_lengths=(64,))[0]["input_ids"]
    assert set(np.unique(ids)) == {0, 1, 2, 3, 4, 5, 6}  # every id can occur; 3 only as padding
