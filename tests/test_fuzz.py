"""Mutated ONNX inputs through `tfopt optimize`: a one-line error or a faithful model, never a traceback.

An error is ONE line of at most 200 characters that quotes no raw ONNX Runtime text; an exit 0
must not be "parity not checked" (``fuzz_onnx.judge``: LONG_LINE, RAW_TEXT, NOT_ONE_LINE,
TRACEBACK, UNCHECKED_WRITTEN are failures).

The cases come from ``fuzz_onnx.py`` (deterministic by index); CI runs the first
:data:`CI_CASES`, ``-m slow`` another :data:`SLOW_CASES`. A failing case's id names its
index, seed and mutation: ``python tests/fuzz_onnx.py --start INDEX --cases 1 --keep DIR``
reproduces it and keeps the files.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import fuzz_onnx as fuzz

CI_CASES = 240  # every mutation at least 4 times
CI_MODEL_SHARE = 0.1  # of CI cases on the exported BERT/GPT-2: fusing and validating them costs ~10x a hand-built seed
SLOW_CASES = 2000


@pytest.fixture(scope="session")
def fuzz_seeds(tmp_path_factory):
    return fuzz.build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def _check_case(case, tmp_path):
    outcome = fuzz.run_case(case, tmp_path)
    assert not outcome.failed, outcome.describe()


@pytest.mark.parametrize("index", range(CI_CASES))
def test_fuzzed_input_gives_one_line_or_a_faithful_model(fuzz_seeds, index, tmp_path):
    _check_case(fuzz.plan_case(index, fuzz_seeds, model_share=CI_MODEL_SHARE), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(CI_CASES, CI_CASES + SLOW_CASES))
def test_fuzzed_input_many(fuzz_seeds, index, tmp_path):
    _check_case(fuzz.plan_case(index, fuzz_seeds), tmp_path)


# ----------------------------------------------------------------------------- the harness itself


def test_ci_set_covers_every_mutation_and_both_model_seeds(fuzz_seeds):
    cases = [fuzz.plan_case(index, fuzz_seeds, model_share=CI_MODEL_SHARE) for index in range(CI_CASES)]
    per_mutation = {name: sum(case.mutation == name for case in cases) for name in fuzz.MUTATIONS}
    assert min(per_mutation.values()) >= 4, per_mutation
    seeds = {case.seed.name for case in cases}
    assert {"layer_norm_mlp", "causal_scores", "bias_gelu"} <= seeds
    if any(seed.name == "gpt2" for seed in fuzz_seeds):  # the PyTorch deployment has the adapters
        assert {"bert", "gpt2"} <= seeds
    assert any(case.external for case in cases if case.mutation in fuzz.BYTE_MUTATIONS)


def test_cases_are_deterministic(fuzz_seeds, tmp_path):
    for index in (3, 27, 101):
        first, _ = fuzz.write_case(fuzz.plan_case(index, fuzz_seeds), tmp_path / f"a{index}")
        second, _ = fuzz.write_case(fuzz.plan_case(index, fuzz_seeds), tmp_path / f"b{index}")
        assert fuzz.snapshot(first.parent) == fuzz.snapshot(second.parent)


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_every_seed_fuses_and_matches_unmutated(fuzz_seeds, external, tmp_path):
    """Unmutated, each seed fuses something and matches its input: what gives a mutation's outcome meaning."""
    from tfopt.optimizer import optimize_model

    for seed in fuzz_seeds:
        outcome = fuzz.run_case(fuzz.Case(0, seed, "unchanged", external), tmp_path)
        assert outcome.category == fuzz.OK_PARITY, outcome.describe()
        fused = optimize_model(tmp_path / outcome.case.label / "in" / fuzz.MODEL_FILE, model_type=seed.model_type)
        assert sum(fused.get_fused_operator_statistics().values()) > 0, f"{seed.name}: tfopt fuses nothing in it"


def _outcome_of(monkeypatch, tmp_path, fuzz_seeds, name, replace):
    """Run the unmutated hand-built LayerNorm seed with ``tfopt.optimizer.<name>`` wrapped by ``replace``."""
    import tfopt.optimizer

    owner, _, attribute = name.rpartition(".")
    target = getattr(tfopt.optimizer, owner) if owner else tfopt.optimizer
    original = getattr(target, attribute)
    monkeypatch.setattr(target, attribute, lambda *a, **k: replace(original, *a, **k))
    seed = next(s for s in fuzz_seeds if s.name == "layer_norm_mlp")
    return fuzz.run_case(fuzz.Case(0, seed, "unchanged", external=False), tmp_path)


def test_harness_reports_a_traceback(monkeypatch, tmp_path, fuzz_seeds):
    def explode(original, *args, **kwargs):
        raise KeyError("q")

    outcome = _outcome_of(monkeypatch, tmp_path, fuzz_seeds, "optimize_model", explode)
    assert outcome.category == fuzz.TRACEBACK and "KeyError" in outcome.detail


@pytest.mark.parametrize(
    "message, category",
    [("x" * 300, fuzz.LONG_LINE), ("ONNX Runtime cannot load it ([ONNXRuntimeError] : 1 : FAIL : boom)", fuzz.RAW_TEXT)],
    ids=["long", "raw"],
)
def test_harness_reports_an_error_line_that_is_too_long_or_raw(monkeypatch, tmp_path, fuzz_seeds, message, category):
    from tfopt.errors import TfoptError

    def fail(original, *args, **kwargs):
        raise TfoptError(message)

    outcome = _outcome_of(monkeypatch, tmp_path, fuzz_seeds, "optimize_model", fail)
    assert outcome.category == category, outcome.describe()


def test_harness_reports_a_model_written_with_parity_not_checked(monkeypatch, tmp_path, fuzz_seeds):
    def unchecked(original, *args, **kwargs):
        import click

        result = original(*args, **kwargs)
        click.echo("tfopt: validated: loads in ONNX Runtime; parity not checked: (stand-in)", err=True)
        return result

    outcome = _outcome_of(monkeypatch, tmp_path, fuzz_seeds, "OptimizedModel.save_model_to_file", unchecked)
    assert outcome.category == fuzz.UNCHECKED_WRITTEN, outcome.describe()


def test_harness_reports_an_output_that_computes_something_else(monkeypatch, tmp_path, fuzz_seeds):
    def save_then_shift(original, self, output_path, *args, **kwargs):
        written = original(self, output_path, *args, **kwargs)
        model = onnx.load(str(output_path))
        name = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = [name + "_raw" if out == name else out for out in node.output]
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "fuzz_shift"))
        model.graph.node.append(helper.make_node("Add", [name + "_raw", "fuzz_shift"], [name]))
        onnx.save(model, str(output_path))
        return written

    outcome = _outcome_of(monkeypatch, tmp_path, fuzz_seeds, "OptimizedModel.save_model_to_file", save_then_shift)
    assert outcome.category == fuzz.OUTPUT_DIFFERS, outcome.describe()


def test_harness_reports_files_left_after_a_failure(monkeypatch, tmp_path, fuzz_seeds):
    from tfopt.errors import TfoptError

    def save_then_fail(original, self, output_path, *args, **kwargs):
        original(self, output_path, *args, **kwargs)
        raise TfoptError("late failure")

    outcome = _outcome_of(monkeypatch, tmp_path, fuzz_seeds, "OptimizedModel.save_model_to_file", save_then_fail)
    assert outcome.category == fuzz.LEFT_FILES, outcome.describe()


def test_compare_nan_inf_and_tolerance():
    reference = np.array([1.0, np.nan, np.inf, -np.inf, 100.0], dtype=np.float32)
    assert fuzz.compare(reference, reference.copy()) is None
    assert fuzz.compare(reference, reference + np.float32(0.05)) is None  # 0.05 <= 1e-3 * 100
    assert "NaN" in fuzz.compare(reference, np.array([1, 2, np.inf, -np.inf, 100], np.float32))
    assert "inf" in fuzz.compare(reference, np.array([1, np.nan, -np.inf, -np.inf, 100], np.float32))
    assert "diff" in fuzz.compare(reference, np.array([1.5, np.nan, np.inf, -np.inf, 100], np.float32))
    assert "shape" in fuzz.compare(reference, reference[:4])
    assert fuzz.compare(np.array([1, 2]), np.array([1, 3])) is not None


def test_summary_table_names_every_failing_mutation(fuzz_seeds):
    case = fuzz.plan_case(7, fuzz_seeds)
    table = fuzz.summary_table([fuzz.Outcome(case, fuzz.TRACEBACK, "boom"), fuzz.Outcome(case, fuzz.REFUSED)])
    assert fuzz.TRACEBACK in table and case.mutation in table and fuzz.REFUSED in table
