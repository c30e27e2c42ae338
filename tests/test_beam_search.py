"""tfopt.beam_search against transformers' own ``generate``: the same tokens, case by case.

The numpy search drives a tiny random BART or T5 through a torch ``step`` that keeps the
model's own cache and reorders it with ``beam_origin``, so a wrong origin changes the tokens.
The reference is ``model.generate`` with an explicit GenerationConfig. Logits processors are
off: each model's ``generation_config`` is replaced by a bare ``GenerationConfig()``, which
drops BART's default ``forced_eos_token_id=2`` (a random config sets no forced BOS, n-gram
blocking or min length, but a plain GenerationConfig passed to ``generate`` would inherit
whatever the model's has); ``test_no_logits_processor_is_active`` checks that HF builds none.

Random models are nearly uniform over the vocabulary, where EOS at step one always wins; so
the LM heads are untied and sharpened (larger weights), and EOS is made likelier in some
variants (BART's ``final_logits_bias``; T5, whose head has no bias, gets a biased head).
Then hypotheses finish at many lengths and ``length_penalty`` and ``early_stopping`` change
the answer; the ``test_cases_*`` tests prove it, so a broken EOS, penalty or stopping path
fails here. The last tests need numpy only and run without torch.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tfopt.beam_search import beam_search, greedy_search

try:  # the TensorFlow deployment has neither; the numpy-only tests still run there
    import torch
    import transformers
except ImportError:
    torch = transformers = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch and transformers (the reference is generate)")

NUM_BEAMS = (2, 4)
LENGTH_PENALTIES = (1.0, 0.6, 2.0)
EARLY_STOPPING = (False, True, "never")
# (batch size, max_new_tokens): a single row, a padded batch, and a cut short by max_new_tokens
SHAPES = ((1, 32), (3, 32), (3, 6))
# name: (family, EOS boost); "bart" has no boost, so its EOS comes from the model alone
MODELS = {"bart": ("bart", 0.0), "bart_eos": ("bart", 2.0), "t5": ("t5", 4.0)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: 10x faster for these tiny matrices than a pool, and restored after."""
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def _model(name: str):
    """A tiny random model (fixed seed), its special tokens and a padded 3-row encoder batch."""
    family, eos_boost = MODELS[name]
    torch.manual_seed(0)
    if family == "bart":
        # init_std 0.1 (not 0.02) so that the encoder rows and the decoder's history matter
        config = transformers.BartConfig(
            vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64,
            tie_word_embeddings=False, init_std=0.1)
        model = transformers.BartForConditionalGeneration(config).eval()
        special = {"decoder_start_token_id": 2, "eos_token_id": 2, "pad_token_id": 1}
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, 0.2)  # confident next-token distributions
            model.final_logits_bias[0, 2] += eos_boost
    else:
        config = transformers.T5Config(vocab_size=100, d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4,
                                       tie_word_embeddings=False, initializer_factor=3.0)
        model = transformers.T5ForConditionalGeneration(config).eval()
        special = {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}  # pad 0: HF's fill quirk
        # T5's head has no bias to raise EOS with: a head with one (T5's forward just calls lm_head)
        model.lm_head = torch.nn.Linear(64, 100, bias=True)
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, 0.05)
            model.lm_head.bias.zero_()
            model.lm_head.bias[1] = eos_boost
    model.generation_config = transformers.GenerationConfig()  # no processors inherited from the model
    pad = special["pad_token_id"]
    ids = torch.randint(3, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = pad
    return model, special, ids, mask


def _config(special, num_beams, max_new_tokens, length_penalty=1.0, early_stopping=False):
    return transformers.GenerationConfig(
        num_beams=num_beams, max_new_tokens=max_new_tokens, length_penalty=length_penalty,
        early_stopping=early_stopping, do_sample=False, **special)


@functools.lru_cache(maxsize=None)
def _hf_run(name, batch, num_beams, max_new_tokens, length_penalty=1.0, early_stopping=False):
    """``generate``'s new tokens (its decoder start token at position 0 removed) and its decoder calls."""
    model, special, ids, mask = _model(name)
    config = _config(special, num_beams, max_new_tokens, length_penalty, early_stopping)
    calls = []
    hook = model.get_decoder().register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids[:batch], attention_mask=mask[:batch], generation_config=config)
    finally:
        hook.remove()
    assert (out[:, 0] == special["decoder_start_token_id"]).all()
    return out[:, 1:].numpy(), len(calls)


def _hf(*case):
    return _hf_run(*case)[0]


def _torch_step(name, batch, num_beams, reorder=True):
    """The caller's side: encoder run once, rows expanded per beam, the decoder's cache kept and reordered."""
    model, _, ids, mask = _model(name)
    with torch.no_grad():
        hidden = model.get_encoder()(input_ids=ids[:batch], attention_mask=mask[:batch]).last_hidden_state
    hidden = hidden.repeat_interleave(num_beams, dim=0)
    mask = mask[:batch].repeat_interleave(num_beams, dim=0)
    state = {"cache": None, "calls": 0}

    def step(tokens, beam_origin):
        assert tokens.dtype == np.int64 and tokens.shape == (batch * num_beams, 1)
        # greedy (one beam) never moves rows; beam search gives an origin from the second call on
        assert (beam_origin is None) == (num_beams == 1 or state["calls"] == 0)
        if beam_origin is not None:
            assert beam_origin.dtype == np.int64 and beam_origin.shape == (batch * num_beams,)
            # a beam continues a beam of its own batch item
            assert (beam_origin // num_beams == np.arange(batch * num_beams) // num_beams).all()
            if reorder:
                state["cache"].reorder_cache(torch.from_numpy(beam_origin))
        with torch.no_grad():
            out = model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=torch.from_numpy(tokens),
                        past_key_values=state["cache"], use_cache=True)
        state["cache"] = out.past_key_values
        state["calls"] += 1
        return out.logits[:, -1].numpy()

    return step, state


def _ours(name, batch, num_beams, max_new_tokens, length_penalty=1.0, early_stopping=False, reorder=True,
          state=None):
    step, step_state = _torch_step(name, batch, num_beams, reorder)
    special = _model(name)[1]
    out = beam_search(step, batch, num_beams, max_new_tokens, length_penalty=length_penalty,
                      early_stopping=early_stopping, **special)
    assert out.dtype == np.int64
    if state is not None:
        state.update(step_state)
    return out


def _grid(names=MODELS, shapes=SHAPES):
    for name in names:
        for batch, max_new_tokens in shapes:
            for num_beams in NUM_BEAMS:
                for length_penalty in LENGTH_PENALTIES:
                    for early_stopping in EARLY_STOPPING:
                        yield name, batch, num_beams, max_new_tokens, length_penalty, early_stopping


def _finish_lengths(tokens, eos):
    """Per row: new tokens up to and including the first EOS, or None when the row has none."""
    return [int(np.flatnonzero(row == eos)[0]) + 1 if (row == eos).any() else None for row in tokens]


@needs_torch
@pytest.mark.parametrize("case", list(_grid()), ids=lambda c: "-".join(map(str, c)))
def test_beam_search_matches_generate(case):
    expected, hf_calls = _hf_run(*case)
    state = {}
    got = _ours(*case, state=state)
    assert got.shape == expected.shape, (got, expected)
    np.testing.assert_array_equal(got, expected)
    # and it stops when generate stops: the model runs as many steps
    assert state["calls"] == hf_calls


@needs_torch
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("batch,max_new_tokens", SHAPES)
def test_greedy_search_matches_generate(name, batch, max_new_tokens):
    expected, hf_calls = _hf_run(name, batch, 1, max_new_tokens)
    special = _model(name)[1]
    step, state = _torch_step(name, batch, 1)
    got = greedy_search(step, batch, max_new_tokens, **special)
    np.testing.assert_array_equal(got, expected)
    assert state["calls"] == hf_calls
    # one beam is greedy search, as in generate()
    step, _ = _torch_step(name, batch, 1)
    np.testing.assert_array_equal(beam_search(step, batch, 1, max_new_tokens, **special), expected)


@needs_torch
def test_no_eos_token_runs_to_max_new_tokens():
    """With no EOS nothing finishes early: generate and the numpy search both give max_new_tokens tokens."""
    model, special, ids, mask = _model("bart_eos")
    special = dict(special, eos_token_id=None)
    for num_beams in (1, 3):
        config = _config(special, num_beams, 8, early_stopping=True)
        with torch.no_grad():
            expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, 1:].numpy()
        step, _ = _torch_step("bart_eos", 3, num_beams)
        got = beam_search(step, 3, num_beams, 8, early_stopping=True, **special)
        assert got.shape == (3, 8)
        np.testing.assert_array_equal(got, expected)


@needs_torch
def test_no_logits_processor_is_active():
    """The comparison is of bare beam search: HF must build no processor for these configs."""
    for name in MODELS:
        model, special, ids, _ = _model(name)
        resolved, _ = model._prepare_generation_config(_config(special, 4, 32, 2.0, "never"))
        processors = model._get_logits_processor(resolved, input_ids_seq_length=1, encoder_input_ids=ids,
                                                  device="cpu", model_kwargs={})
        assert len(processors) == 0, processors


@needs_torch
def test_cases_exercise_eos_padding_and_early_stop():
    """The grid reaches the paths that matter: EOS, rows padded after EOS, outputs cut short (162 cases)."""
    finished = padded = short = 0
    t5_tails = []
    for name, batch, num_beams, max_new_tokens, lp, es in _grid():
        out = _hf(name, batch, num_beams, max_new_tokens, lp, es)
        lengths = _finish_lengths(out, _model(name)[1]["eos_token_id"])
        finished += sum(n is not None for n in lengths)
        row_padded = [n is not None and n < out.shape[1] for n in lengths]
        padded += any(row_padded)
        short += out.shape[1] < max_new_tokens
        if name == "t5":
            t5_tails += [row[n:] for row, n, p in zip(out, lengths, row_padded) if p]
    assert finished > 150 and padded > 40 and short > 40, (finished, padded, short)
    # T5's pad id is 0, and HF pads its beam outputs with EOS (1) instead: that path is compared too
    assert len(t5_tails) > 10 and all((tail == 1).all() for tail in t5_tails)
    # the no-boost BART finishes hypotheses too (EOS emitted by the model alone)
    assert any(_finish_lengths(_hf(*case), 2) != [None] * case[1] for case in _grid(["bart"]))
    # greedy: generation stops once every row has EOS, and finished rows are padded with pad_token_id
    assert _hf("bart", 3, 1, 32).shape[1] < 32
    greedy_t5 = _hf("t5", 3, 1, 32)
    assert greedy_t5.shape[1] == 32
    assert any((row == 1).any() and (row[np.flatnonzero(row == 1)[0] + 1:] == 0).all() for row in greedy_t5)


@needs_torch
def test_cases_are_sensitive_to_length_penalty_and_early_stopping():
    """Changing either setting changes generate's answer in some cases, so both are really compared."""
    by_lp, by_es = {}, {}
    for name, batch, num_beams, max_new_tokens, lp, es in _grid():
        out = _hf(name, batch, num_beams, max_new_tokens, lp, es).tolist()
        by_lp.setdefault((name, batch, num_beams, max_new_tokens, es), set()).add(str(out))
        by_es.setdefault((name, batch, num_beams, max_new_tokens, lp), set()).add(str(out))
    assert sum(len(v) > 1 for v in by_lp.values()) >= 30  # of 54 groups
    assert sum(len(v) > 1 for v in by_es.values()) >= 12
    # with 3 different lp (es) values, all three answers differ somewhere
    assert any(len(v) == 3 for v in by_lp.values())


@needs_torch
@pytest.mark.parametrize("wrong", ["length_penalty", "early_stopping", "no_cache_reorder"])
def test_a_wrong_search_is_caught(wrong):
    """A search run with a wrong setting (or a caller ignoring beam_origin) disagrees with generate somewhere."""
    mismatches = 0
    for name, batch, num_beams, max_new_tokens, lp, es in _grid(["bart_eos", "t5"], [(3, 32)]):
        expected = _hf(name, batch, num_beams, max_new_tokens, lp, es)
        if wrong == "length_penalty":
            got = _ours(name, batch, num_beams, max_new_tokens, {1.0: 2.0, 0.6: 1.0, 2.0: 0.6}[lp], es)
        elif wrong == "early_stopping":
            got = _ours(name, batch, num_beams, max_new_tokens, lp, {False: "never", True: False, "never": True}[es])
        else:
            got = _ours(name, batch, num_beams, max_new_tokens, lp, es, reorder=False)
        mismatches += got.shape != expected.shape or not np.array_equal(got, expected)
    assert mismatches >= 10  # of 36 cases


@needs_torch
def test_log_softmax_is_float32_and_close_to_torch():
    from tfopt.beam_search import _log_softmax

    logits = np.random.default_rng(0).standard_normal((16, 1000)).astype(np.float32) * 4
    ours = _log_softmax(logits)
    ref = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert ours.dtype == np.float32
    # same (x - max) in float32; the per-row constant log(sum(exp)) within a few ulps
    np.testing.assert_allclose(ours, ref, rtol=0, atol=4e-6)
    np.testing.assert_array_equal(np.argsort(ours, axis=-1, kind="stable"), np.argsort(ref, axis=-1, kind="stable"))


def test_topk_orders_largest_first_and_breaks_ties_by_index():
    from tfopt.beam_search import _topk

    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]], dtype=np.float32)
    assert _topk(scores, 4).tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]
    assert _topk(scores, 6).tolist() == [[1, 2, 4, 3, 0, 5], [0, 1, 2, 3, 4, 5]]


@pytest.mark.parametrize("kwargs,message", [
    ({"num_beams": 0}, "num_beams"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"batch_size": 0}, "batch_size"),
    ({"early_stopping": "sometimes"}, "early_stopping"),
    ({"early_stopping": 1}, "early_stopping"),
])
def test_rejects_bad_arguments(kwargs, message):
    args = {"batch_size": 1, "num_beams": 2, "max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        beam_search(lambda tokens, origin: np.zeros((len(tokens), 5), np.float32), args.pop("batch_size"),
                    args.pop("num_beams"), args.pop("max_new_tokens"), decoder_start_token_id=0, eos_token_id=1,
                    pad_token_id=0, **args)


def test_step_returning_wrong_rows_is_an_error():
    with pytest.raises(ValueError, match="logits of shape"):
        beam_search(lambda tokens, origin: np.zeros((1, 5), np.float32), 2, 2, 4, decoder_start_token_id=0,
                    eos_token_id=1, pad_token_id=0)
