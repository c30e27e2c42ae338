"""benchmark: decode grid, prompt step and greedy generation, PyTorch and every ONNX model."""

from __future__ import annotations

import pytest

from gpt2_cases import make_ctx
from tfopt.errors import TfoptError
from tfopt.results import to_jsonable
from tfopt_gpt2.benchmark import DEFAULT_BATCH_SIZES, DEFAULT_PAST_LENGTHS, bench_shapes, fitted_bench_shapes
from tfopt_gpt2.hooks import benchmark_hook

ENGINES = ("torch", "ort:raw", "ort:copy")


def test_rows_for_every_engine_step_and_shape(exported_variant, tmp_path):
    _, exported = exported_variant("tiny-gpt2", "legacy")
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(exported.model_path.read_bytes())
    ctx = make_ctx(
        tmp_path, "tiny-gpt2", bench_batch_sizes=[1, 3], bench_past_lengths=[0, 5], bench_prompt_lengths=6,
        bench_repeat=3, bench_warmup=1, bench_generate_tokens=5,
    )
    result = benchmark_hook(ctx, exported, {"ort:raw": exported.model_path, "ort:copy": copy})
    decode = [(b, p, 1) for b in (1, 3) for p in (0, 5)]
    prompt = [(b, 0, 6) for b in (1, 3)]
    assert [(r.engine, r.step, r.batch_size, r.past_length, r.sequence_length) for r in result.rows] == [
        (engine, step, b, p, s)
        for step, shapes in (("decode", decode), ("prompt", prompt))
        for b, p, s in shapes
        for engine in ENGINES
    ]
    for row in result.rows:
        assert 0 < row.p50_ms <= row.p90_ms <= row.p95_ms <= row.p99_ms
        assert row.throughput == pytest.approx(row.batch_size / (row.p50_ms / 1000))
        assert row.tokens_per_second == pytest.approx(row.batch_size * row.sequence_length / (row.p50_ms / 1000))
    assert [(g.engine, g.new_tokens, g.matches_torch) for g in result.generation] == [
        ("torch", 5, None), ("ort:raw", 5, True), ("ort:copy", 5, True)
    ]
    assert all(g.seconds > 0 and g.tokens_per_second > 0 for g in result.generation)
    report = to_jsonable(result)
    assert report["rows"][0]["past_length"] == 0 and report["generation"][1]["matches_torch"] is True


def test_default_grid_is_the_issues():
    shapes = bench_shapes(make_ctx(".", "tiny-gpt2"))
    assert DEFAULT_BATCH_SIZES == (1, 8, 32, 128) and DEFAULT_PAST_LENGTHS == (4, 8, 32, 128)
    decode = [(s.batch_size, s.past_length, s.sequence_length) for kind, s in shapes if kind == "decode"]
    assert decode == [(b, p, 1) for b in (1, 8, 32, 128) for p in (4, 8, 32, 128)]
    assert [(s.batch_size, s.past_length, s.sequence_length) for kind, s in shapes if kind == "prompt"] == [
        (b, 0, 32) for b in (1, 8, 32, 128)
    ]
    # the host's generic --sequence-lengths are prompt lengths here; 0 drops the prompt rows
    generic = bench_shapes(
        make_ctx(".", "tiny-gpt2", bench_batch_sizes=[2], bench_past_lengths=[0], bench_sequence_lengths=[8, 16])
    )
    assert [(kind, s.past_length, s.sequence_length) for kind, s in generic] == [
        ("decode", 0, 1), ("prompt", 0, 8), ("prompt", 0, 16)
    ]
    assert [kind for kind, _ in bench_shapes(make_ctx(".", "tiny-gpt2", bench_prompt_lengths=0))] == ["decode"] * 16


def test_default_grid_fits_the_models_positions_and_says_what_changed():
    ctx = make_ctx(".", "tiny-gpt2", bench_batch_sizes=[1])
    shapes, notes = fitted_bench_shapes(ctx, max_positions=128)  # tiny-gpt2's n_positions
    assert [(kind, s.past_length, s.sequence_length) for kind, s in shapes] == [
        ("decode", 4, 1), ("decode", 8, 1), ("decode", 32, 1), ("decode", 127, 1), ("prompt", 0, 32)
    ]
    assert notes == ["default past length 128 clipped to 127 (the model has 128 positions and each decode step adds 1 token)"]
    assert all(s.total_length <= 128 for _, s in shapes)
    # a clipped length that repeats one already in the grid is dropped, not timed twice
    shapes, notes = fitted_bench_shapes(ctx, max_positions=9)
    assert [(kind, s.past_length, s.sequence_length) for kind, s in shapes] == [
        ("decode", 4, 1), ("decode", 8, 1), ("prompt", 0, 9)
    ]
    assert [note.split(" (")[0] for note in notes] == [
        "default past length 32 dropped", "default past length 128 dropped", "default prompt length 32 clipped to 9"
    ]
    # lengths the user chose are not changed (the benchmark refuses them instead, see below)
    asked, notes = fitted_bench_shapes(make_ctx(".", "tiny-gpt2", bench_batch_sizes=[1], bench_past_lengths=[128]), 128)
    assert [s.past_length for kind, s in asked if kind == "decode"] == [128] and notes == []


def test_base_model_has_no_generation_and_long_pasts_are_refused(exported_variant, tmp_path):
    _, exported = exported_variant("tiny-gpt2-base", "legacy")
    ctx = make_ctx(
        tmp_path, "tiny-gpt2-base", bench_batch_sizes=[2], bench_past_lengths=[3], bench_prompt_lengths=0, bench_repeat=2
    )
    result = benchmark_hook(ctx, exported, {"ort:raw": exported.model_path})
    assert [(r.engine, r.step) for r in result.rows] == [("torch", "decode"), ("ort:raw", "decode")] and result.generation == []
    defaults = benchmark_hook(
        make_ctx(tmp_path, "tiny-gpt2-base", bench_batch_sizes=[1], bench_prompt_lengths=0, bench_repeat=1, bench_warmup=0),
        exported, {"ort:raw": exported.model_path},
    )
    assert sorted({r.past_length for r in defaults.rows}) == [4, 8, 32, 127]
    assert to_jsonable(defaults)["grid_notes"] == [
        "default past length 128 clipped to 127 (the model has 128 positions and each decode step adds 1 token)"
    ]
    with pytest.raises(TfoptError, match="exceeds tiny-gpt2-base's 128 positions"):
        benchmark_hook(make_ctx(tmp_path, "tiny-gpt2-base", bench_past_lengths=[200]), exported, {})
