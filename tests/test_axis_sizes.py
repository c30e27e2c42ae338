"""Named axes the generic sizes do not fit (audio through a conv front end): ModelInfo.axis_sizes.

Validation's generated feeds have 7 and 4 positions; a conv front end (kernel 10, stride 5,
then kernel 3, stride 2, as Wav2Vec2's) cannot run on them, so validation compared nothing and
rule bisection could never fire. The adapter states sizes that fit; the conformance kit fails
an adapter whose written model was never compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tfopt import hookimpl
from tfopt.errors import TfoptError
from tfopt.feeds import dummy_feeds
from tfopt.graph import read_io_spec
from tfopt.results import ExportResult, ModelInfo
from tfopt.testing import check_adapter, isolated_plugin_manager

pytest.importorskip("torch")  # the model is a torch export; the TensorFlow deployment skips these

SAMPLES = [400, 240]


def _export_audio_model(path: Path) -> None:
    import torch

    from tfopt.torch_kit import quiet_export

    class Audio(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv1d(1, 16, 10, stride=5)
            self.conv2 = torch.nn.Conv1d(16, 32, 3, stride=2)
            self.norm = torch.nn.LayerNorm(32)
            self.proj = torch.nn.Linear(32, 32)

        def forward(self, input_values):
            hidden = torch.nn.functional.gelu(self.conv1(input_values[:, None, :]))
            hidden = torch.nn.functional.gelu(self.conv2(hidden)).transpose(1, 2)
            return self.proj(self.norm(hidden))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Audio().eval()
    axes = {"input_values": {0: "batch", 1: "samples"}, "frames": {0: "batch", 1: "frames"}}
    with quiet_export():
        torch.onnx.export(model, (torch.zeros(2, 400),), str(path), dynamo=False, opset_version=17,
                          input_names=["input_values"], output_names=["frames"], dynamic_axes=axes)


class AudioAdapter:
    """An adapter for the model above; ``info`` fields set per test, dummy inputs of its own that fit."""

    def __init__(self, **info):
        self.info = info

    @hookimpl
    def export(self, ctx) -> ExportResult:
        path = Path(ctx.work_dir) / "exported.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        _export_audio_model(path)
        return ExportResult(model_path=path, io=read_io_spec(path), info=ModelInfo("audio", expected={}, **self.info))


class AudioAdapterOwnInputs(AudioAdapter):
    """As the outside trial's adapter: its make_dummy_inputs sizes the samples, validation is not told."""

    @hookimpl
    def make_dummy_inputs(self, ctx, exported):
        return dummy_feeds(exported.model_path, batch_sizes=(1, 2), axis_sizes={"samples": (400, 800)})


def _check(tmp_path, adapter, **options):
    pm = isolated_plugin_manager(tmp_path, plugins={"audio": adapter})
    return check_adapter("audio", options={"benchmark": False, **options}, work_dir=tmp_path, pm=pm)


def test_kit_fails_an_adapter_whose_model_validation_could_not_compare(tmp_path):
    with pytest.raises(AssertionError, match=r"fuse: validation did not compare optimized.onnx's numbers .*ModelInfo.axis_sizes"):
        _check(tmp_path, AudioAdapterOwnInputs())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_stated_axis_sizes_size_validation_dummy_inputs_and_benchmark(tmp_path, precision):
    options = {"precision": precision, "benchmark": True, "bench_repeat": 2, "bench_warmup": 1}
    report = _check(tmp_path, AudioAdapter(axis_sizes={"samples": SAMPLES}), **options).report
    assert report["fuse"]["validation"]["feeds"] == 2
    if precision == "fp16":  # the float input's Cast now precedes its consumer
        assert report["convert_precision"]["validation"]["feeds"] == 2
    samples = sorted({feed["input_values"]["shape"][1] for feed in report["make_dummy_inputs"]})
    assert samples == sorted(SAMPLES)
    assert {row["shape"]["samples"] for row in report["benchmark"]["rows"]} == set(SAMPLES)


def test_option_axis_sizes_override_the_stated_ones(tmp_path):
    options = {"axis_sizes": {"samples": [300, 500]}, "benchmark": True, "bench_repeat": 2, "bench_warmup": 1}
    report = _check(tmp_path, AudioAdapter(axis_sizes={"samples": SAMPLES}), **options).report
    assert sorted({feed["input_values"]["shape"][1] for feed in report["make_dummy_inputs"]}) == [300, 500]
    assert report["fuse"]["validation"]["feeds"] == 2
    # the benchmark times what verify checked: --option axis_sizes reaches it too (bench_axis_sizes unset)
    assert {row["shape"]["samples"] for row in report["benchmark"]["rows"]} == {300, 500}


def test_an_adapter_without_sizes_benchmarks_at_the_option_sizes(tmp_path):
    options = {"axis_sizes": {"samples": [400]}, "benchmark": True, "bench_repeat": 2, "bench_warmup": 1}
    pm = isolated_plugin_manager(tmp_path, plugins={"audio": AudioAdapterOwnInputs()})
    from tfopt.pipeline import run_pipeline
    from tfopt.results import RunContext

    ctx = RunContext(family="audio", source=None, work_dir=tmp_path / "run", options=options)
    report = run_pipeline(pm, "audio", ctx).report
    assert {row["shape"]["samples"] for row in report["benchmark"]["rows"]} == {400}


def test_a_run_whose_validation_compared_nothing_fails(tmp_path, monkeypatch):
    """tfopt run: a written model whose numbers validation never compared is a failed run (exit 1), not a pass."""
    from click.testing import CliRunner

    from tfopt.cli import main
    from tfopt.errors import VerificationFailed
    from tfopt.pipeline import run_pipeline
    from tfopt.results import RunContext

    pm = isolated_plugin_manager(tmp_path, plugins={"audio": AudioAdapterOwnInputs()})
    ctx = RunContext(family="audio", source=None, work_dir=tmp_path / "run", options={"benchmark": False})
    with pytest.raises(VerificationFailed, match=r"^validation compared no numbers of optimized.onnx .*parity not checked: .*ModelInfo.axis_sizes") as raised:
        run_pipeline(pm, "audio", ctx)
    assert "\n" not in str(raised.value)
    assert ctx.results["verify"].passed  # the adapter's own inputs verify: only validation's silence fails the run
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "failed" and report["error"].startswith("validation compared no numbers")
    ctx = RunContext(family="audio", source=None, work_dir=tmp_path / "run", options={"benchmark": False, "validate": False})
    assert run_pipeline(pm, "audio", ctx).passed  # --no-validate: nothing was promised

    import tfopt.cli as cli

    monkeypatch.setattr(cli, "_pm", lambda ctx: pm)
    result = CliRunner().invoke(main, ["run", "--plugin", "audio", "--no-benchmark", "--output", str(tmp_path / "cli")])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("tfopt: error: validation compared no numbers of optimized.onnx")


def test_an_adapter_may_say_why_parity_cannot_be_checked(tmp_path):
    reason = "test: validation cannot run this model"
    outcome = _check(tmp_path, AudioAdapterOwnInputs(parity_not_checked=reason))
    assert outcome.report["fuse"]["validation"]["feeds"] == 0
    assert outcome.report["export"]["info"]["parity_not_checked"] == reason


def test_sequence_lengths_for_axes_all_sized_by_name_are_refused(tmp_path):
    with pytest.raises(AssertionError, match=r"sequence_lengths does not apply: .*\(samples\) are sized by name"):
        _check(tmp_path, AudioAdapter(axis_sizes={"samples": SAMPLES}), sequence_lengths=[400])


def test_validation_compares_numbers_on_stated_sizes_and_catches_a_wrong_model(tmp_path):
    """The reference runs on the stated sizes, so a candidate that computes something else fails."""
    import onnx
    from onnx import numpy_helper

    from tfopt.graph.validate import Reference

    exported = tmp_path / "exported.onnx"
    _export_audio_model(exported)
    broken = onnx.load(str(exported))
    weight = next(init for init in broken.graph.initializer if init.name.endswith("conv1.weight"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(broken, str(tmp_path / "broken.onnx"))

    unsized = Reference(exported).validate(tmp_path / "broken.onnx")
    assert unsized.passed and unsized.feeds == 0  # nothing compared: the silent case of the trial
    assert "axis_sizes" in unsized.notes[0]
    sized = Reference(exported, axis_sizes={"samples": SAMPLES}).validate(tmp_path / "broken.onnx")
    assert not sized.passed and "differs from the input model's" in sized.problem and "[2, 400]" in sized.problem
    assert Reference(exported, axis_sizes={"samples": SAMPLES}).validate(exported).feeds == 2


def test_bad_stated_axis_sizes_are_one_line_errors(tmp_path):
    with pytest.raises(AssertionError, match=r"ModelInfo.axis_sizes\[samples\] must be positive integers"):
        _check(tmp_path, AudioAdapter(axis_sizes={"samples": [0]}))
    with pytest.raises(AssertionError, match=r"axis_sizes names \['time'\], which the model has not"):
        _check(tmp_path / "b", AudioAdapter(axis_sizes={"time": [400]}))


def test_dummy_feeds_unknown_axis_is_refused(tmp_path):
    exported = tmp_path / "exported.onnx"
    _export_audio_model(exported)
    assert [feed["input_values"].shape for feed in dummy_feeds(exported, batch_sizes=(1,), axis_sizes={"samples": (400,)})] == [(1, 400)]
    with pytest.raises(TfoptError, match="dynamic axes: batch, samples"):
        dummy_feeds(exported, axis_sizes={"frames": (4,)})
    assert np.isfinite(dummy_feeds(exported, batch_sizes=(2,), axis_sizes={"samples": (400,)})[0]["input_values"]).all()


def test_profile_of_a_run_dir_uses_the_runs_axis_sizes_and_says_what_it_profiled(tmp_path):
    from tfopt.profile import profile_lines, profile_run
    from tfopt.report import export_result_from_report, resolve_output
    from tfopt.results import RunContext, to_jsonable

    pm = isolated_plugin_manager(tmp_path, plugins={"audio": AudioAdapter(axis_sizes={"samples": SAMPLES})})
    report = check_adapter("audio", options={"benchmark": False}, work_dir=tmp_path, pm=pm).report
    run_dir = tmp_path / "run"
    exported, final = export_result_from_report(report, run_dir), resolve_output(report, run_dir, "final")
    options = {**report["options"], "profile_samples": 2, "profile_warmup": 0}
    result = profile_run(pm, "audio", RunContext("audio", None, run_dir, options=options), exported, final)
    assert result.inputs == {"input_values": [1, max(SAMPLES)]} and result.shape == {"batch": 1, "samples": max(SAMPLES)}
    assert result.feed == "audio's make_dummy_inputs" and result.sequence_length == 0
    assert "batch 1, samples 400," in profile_lines(to_jsonable(result))[0]
    options["profile_sequence_length"] = 32
    with pytest.raises(TfoptError, match=r"--sequence-length does not apply: .*axis_sizes"):
        profile_run(pm, "audio", RunContext("audio", None, run_dir, options=options), exported, final)


@pytest.mark.parametrize(("command", "option"), [("verify", "axis_sizes"), ("bench", "bench_axis_sizes")])
def test_onnx_file_commands_say_how_to_size_axes_that_do_not_fit(tmp_path, command, option):
    from click.testing import CliRunner

    from tfopt.cli import main

    model = tmp_path / "audio.onnx"
    _export_audio_model(model)
    args = [command, str(model), *(["--reference", str(model)] if command == "verify" else ["--repeat", "1"])]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code != 0
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("tfopt: error: ONNX Runtime cannot run the model on the generated inputs (input_values [1, 8])")
    assert error.endswith(f"""size its axes (samples) with --option '{option}={{"samples": [...]}}'""")
    sized = CliRunner().invoke(main, [*args, "--option", option + '={"samples": [400]}'], catch_exceptions=False)
    assert sized.exit_code == 0, sized.output
