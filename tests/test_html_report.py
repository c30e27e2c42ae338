"""report.html: built from report.json alone, self-contained, and checked in a real browser.

The page tests read hand-written reports (no adapter needed); the browser tests open the
pages of real tiny runs (bert_pt fp32/fp16/int8 and gpt2) in headless Chromium, assert
that they render without console errors, that every plot is there and drawn, that
nothing is fetched from outside the file, and keep a screenshot in the test's tmp dir.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tfopt.cli import main
from tfopt.html_report import RunData, render_page, speedups, write_report_page

from headless_chromium import check_page, find_browser

MAX_PAGE_BYTES = 2 * 1024 * 1024


def _report(**changes):
    """A passed run with a fusion table, parity with a histogram, a latency grid and a profile."""
    report = {
        "schema_version": 1, "tfopt_version": "0.1.0", "created_utc": "2026-12-01T10:00:00Z", "status": "passed", "error": None,
        "family": "bert_pt", "source": "tiny-bert", "options": {"precision": "fp32", "benchmark": True},
        "plugins": {"adapter": {"name": "bert_pt", "distribution": "tfopt-bert-pt", "version": "0.1.0"}, "extensions": ["default"]},
        "outputs": {"exported": "exported.onnx", "optimized": "optimized.onnx", "final": "optimized.onnx", "report": "report.json"},
        "stages": {},
        "export": {"model_path": "exported.onnx", "io": {"inputs": {"input_ids": "int64"}, "outputs": ["y"]},
                   "info": {"model_type": "bert", "num_heads": 4, "hidden_size": 32, "num_layers": 2}, "exporter": "dynamo"},
        "fuse": {"model_path": "optimized.onnx", "op_counts": {"MultiHeadAttention": 1, "SkipLayerNormalization": 4, "MatMul": 12},
                 "rule_counts": {"Attention": 1, "SkipLayerNorm": 4, "QuickGelu": 0},
                 "expected": {"Attention|MultiHeadAttention": 2, "SkipLayerNormalization": 4},
                 "missing": ["Attention|MultiHeadAttention: expected 2, found 1"], "validation": None, "dropped_rules": []},
        "convert_precision": None, "make_dummy_inputs": None,
        "verify": {"passed": True, "tolerance": 1e-4, "precision": "fp32", "reference": "torch",
                   "overall": {"max_abs": 2e-6, "p50_abs": 1e-7, "p90_abs": 3e-7, "p99_abs": 8e-7, "max_rel": 0.01, "nan_count": 0},
                   "cases": [{"batch_size": b, "sequence_length": s, "max_abs": 1e-6 * b, "p50_abs": 1e-7, "p90_abs": 2e-7,
                              "p99_abs": 5e-7, "max_rel": 1e-3, "nan_count": 0} for b in (1, 2) for s in (8, 16)],
                   "top1_agreement": None,
                   "histogram": {"log10_edges": [-8.0, -7.5, -7.0, -6.5, -6.0], "counts": [3, 10, 6, 1], "zeros": 2, "nonfinite": 0, "total": 22}},
        "benchmark": {"rows": [
            {"engine": engine, "batch_size": 1, "sequence_length": s, "p50_ms": p50 * s / 8, "p90_ms": p50 * s / 8 * 1.1,
             "p95_ms": p50 * s / 8 * 1.2, "p99_ms": p50 * s / 8 * 1.3, "throughput": 1.0}
            for s in (8, 16) for engine, p50 in (("torch", 3.0), ("ort:raw", 2.0), ("ort:tfopt", 1.0))
        ], "device": "cpu"},
        "profile": {"batch_size": 1, "sequence_length": 16, "past_sequence_length": 0, "inputs": {"input_ids": [1, 16]}, "profiles": [
            _profile_entry("raw", {"MatMul": (0.5, False), "Softmax": (0.2, False), "Add": (0.1, False)}),
            _profile_entry("optimized", {"MatMul": (0.4, False), "MultiHeadAttention": (0.2, True)}),
        ], "comparison": {"rows": [], "removed": ["Softmax", "Add"], "added": ["MultiHeadAttention"], "left": ["MatMul"],
                          "raw_kernel_ms": 0.8, "optimized_kernel_ms": 0.6, "speedup": 1.33}},
        "environment": {"python": "3.11.2", "platform": "Linux", "cpu": "Test CPU", "cpu_count": 2, "cpu_flags": ["avx2"],
                        "packages": {"onnxruntime": "1.32.0"}},
        "warnings": ["expected fusion did not happen: Attention|MultiHeadAttention: expected 2, found 1"],
    }
    report.update(changes)
    return report


def _profile_entry(label, times):
    total = sum(ms for ms, _ in times.values())
    contrib = sum(ms for ms, is_contrib in times.values() if is_contrib)
    return {"label": label, "model_path": f"{label}.onnx", "provider": "CPUExecutionProvider", "threads": 0, "samples": 5, "warmup": 3,
            "run_ms": total * 1.1, "executor_ms": total * 1.05, "kernel_ms": total, "kernel_coverage": 1 / 1.05,
            "contrib_ms": contrib, "contrib_share": contrib / total, "nodes_per_run": len(times),
            "op_types": [{"op_type": op, "ms": ms, "share": ms / total, "calls": 1, "contrib": c} for op, (ms, c) in times.items()],
            "top_nodes": [{"name": f"node_{op}", "op_type": op, "ms": ms, "share": ms / total, "contrib": c, "origin": "model", "input_shapes": []}
                          for op, (ms, c) in times.items()]}


def _plots(page: str) -> list[str]:
    return re.findall(r'<figure class="plot" data-plot="([a-z-]+)"><svg', page)


def _external_references(page: str) -> list[str]:
    """src/href values that would reach outside the page (in-page #ids and data: URLs are fine)."""
    values = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)["\']', page)
    return [value for value in values if not value.startswith(("#", "data:"))]


def test_page_of_one_run_holds_every_section_and_plot(tmp_path):
    page = render_page([RunData("run", tmp_path, _report(), _report()["profile"])])
    assert _plots(page) == ["fusion", "parity-cases", "parity-histogram", "latency", "speedup", "profile", "profile-contrib"]
    assert page.count("<svg") == len(_plots(page))
    for heading in ("What was run", "Fused-op coverage", "Parity", "Latency", "Where the time goes", "Warnings"):
        assert heading in page
    assert "MISSING" in page and "expected fusion did not happen" in page
    assert "Test CPU" in page and "onnxruntime 1.32.0" in page and "tfopt-bert-pt" in page
    assert "removed by fusion:</b> Softmax, Add" in page
    assert _external_references(page) == [] and "<script" not in page
    assert len(page.encode()) < MAX_PAGE_BYTES


def test_each_figure_keeps_its_own_svg_ids(tmp_path):
    page = render_page([RunData("run", tmp_path, _report(), _report()["profile"])])
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "two inline SVGs share an id: one figure's clip path would cut another"
    referenced = set(re.findall(r'url\(#([^)]+)\)', page)) | set(re.findall(r'href="#([^"]+)"', page))
    assert referenced <= set(ids)


def test_speedups_are_baseline_over_tfopt():
    found = speedups(_report()["benchmark"])
    assert found == {"torch": {"b1 s8": 3.0, "b1 s16": 3.0}, "ort:raw": {"b1 s8": 2.0, "b1 s16": 2.0}}


def test_page_says_what_is_missing_instead_of_drawing_nothing(tmp_path):
    report = _report(status="error", error="stage 'fuse' failed in default: boom <b>", fuse=None, verify=None, benchmark=None,
                     profile=None, environment=None, warnings=[])
    page = render_page([RunData("broken", tmp_path, report, None)])
    assert _plots(page) == []
    assert "The fuse stage did not run." in page and "Verification did not run." in page and "Not profiled" in page
    assert "boom &lt;b&gt;" in page and "boom <b>" not in page  # report text is escaped
    assert "ERROR" in page


def test_page_shows_the_primitives_left_unfused_and_an_incomplete_status(tmp_path):
    fuse = {**_report()["fuse"], "leftover": {"Softmax": 1, "gelu formula": 2}}
    page = render_page([RunData("run", tmp_path, _report(status="incomplete", fuse=fuse), None)])
    assert "Primitives left unfused" in page and "gelu formula" in page and '<span class="warn">INCOMPLETE</span>' in page
    clean = render_page([RunData("run", tmp_path, _report(fuse={**_report()["fuse"], "leftover": {}}), None)])
    assert "No primitive left unfused" in clean and "Primitives left unfused" not in clean
    both = render_page([RunData("a", tmp_path, _report(fuse=fuse), None),
                        RunData("b", tmp_path, _report(fuse={**fuse, "leftover": {}}), None)])
    assert '<span class="bad">1 Softmax, 2 gelu formula</span>' in both and '<span class="ok">none</span>' in both


def test_page_survives_non_finite_numbers_and_odd_names(tmp_path):
    report = _report()
    report["verify"]["overall"]["max_abs"] = "inf"
    report["verify"]["cases"][0].update(max_abs="nan", p99_abs="inf", nan_count=3)
    report["verify"]["histogram"]["nonfinite"] = 3
    report["warnings"] = ["<script>alert(1)</script>"]
    runs = [RunData("$HOME's run", tmp_path / "a", report, report["profile"]), RunData("b", tmp_path / "b", _report(), None)]
    page = render_page(runs)
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "compare-parity" in _plots(page)


def test_runs_with_one_name_are_told_apart(tmp_path):
    runs = [RunData("out", tmp_path / "x" / "out", _report(), None), RunData("out", tmp_path / "y" / "out", _report(), None)]
    page = render_page(runs)
    assert "x/out" in page and "y/out" in page


def test_decoder_latency_rows_are_labelled_by_step_and_past(tmp_path):
    rows = [{"engine": engine, "batch_size": 1, "sequence_length": 1, "p50_ms": p50, "p90_ms": p50, "p95_ms": p50, "p99_ms": p50,
             "throughput": 1.0, "step": "decode", "past_length": 16} for engine, p50 in (("ort:raw", 2.0), ("ort:tfopt", 1.0))]
    assert speedups({"rows": rows}) == {"ort:raw": {"decode b1 past 16": 2.0}}


# ----------------------------------------------------------------------------- `tfopt report`


def _write_run(directory: Path, report: dict) -> Path:
    directory.mkdir(parents=True)
    (directory / "report.json").write_text(json.dumps(report))
    return directory


def test_cli_report_writes_one_page_for_several_runs(tmp_path):
    one = _write_run(tmp_path / "fp32", _report())
    two = _write_run(tmp_path / "fp16", _report(options={"precision": "fp16"}, profile=None))
    (two / "profile.json").write_text(json.dumps(_report()["profile"]))  # `tfopt profile RUN_DIR` wrote it
    result = CliRunner().invoke(main, ["report", str(one), str(two), "--output", str(tmp_path / "page" / "both.html")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "page" / "both.html").read_text()
    assert "Side by side" in page and {"compare-latency", "compare-speedup", "compare-parity", "compare-profile"} <= set(_plots(page))
    assert _plots(page).count("profile") == 2  # the second run's profile came from its profile.json
    assert "both.html" in result.stdout and "2 runs" in result.stdout


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "nope", "not a directory"),
    (lambda tmp: tmp, "no report.json here"),
])
def test_cli_report_bad_input_is_one_line(tmp_path, make, message):
    result = CliRunner().invoke(main, ["report", str(make(tmp_path)), "--output", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_cli_report_refuses_a_directory_as_output(tmp_path):
    run = _write_run(tmp_path / "run", _report())
    result = CliRunner().invoke(main, ["report", str(run), "--output", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.stderr


def test_help_does_not_import_matplotlib(tmp_path):
    import subprocess
    import sys

    code = "import sys; from tfopt.cli import main; main(['--help'], standalone_mode=False); print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


# ----------------------------------------------------------------------------- in a real browser


def _browser():
    if find_browser() is None:
        pytest.skip("no Chromium on this machine (scripts/install.sh installs Debian's chromium; apt-get could not here)")


def _check_in_browser(page: Path, shot: Path, expected_plots: set[str]):
    size = page.stat().st_size
    assert size < MAX_PAGE_BYTES, f"{page} weighs {size / 1e6:.2f} MB"
    seen = check_page(page, shot)
    assert seen.errors == []
    assert [url for url in seen.requests if not url.startswith(("file:", "data:"))] == []
    kinds = [plot["kind"] for plot in seen.plots]
    assert expected_plots <= set(kinds), f"missing plots: {expected_plots - set(kinds)}"
    for plot in seen.plots:  # drawn: a real box, marks and axis text in it
        assert plot["svgs"] == 1 and plot["width"] > 300 and plot["height"] > 80 and plot["marks"] >= 5 and plot["texts"] >= 2, plot
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return seen, size


BERT_PLOTS = {"fusion", "parity-cases", "parity-histogram", "latency", "speedup", "profile", "profile-contrib"}


def test_bert_run_page_renders_in_chromium(tiny_bert_runs, tmp_path):
    _browser()
    run = tiny_bert_runs["fp32"]
    seen, size = _check_in_browser(run / "report.html", tmp_path / "bert.png", BERT_PLOTS)  # the page `tfopt run` wrote
    assert seen.title.startswith("tfopt: bert_pt on tiny-bert")
    print(f"bert_pt fp32 page: {size / 1024:.0f} KB, {len(seen.plots)} plots, {seen.page_height} px tall")


def test_three_runs_side_by_side_render_in_chromium(tiny_bert_runs, tmp_path):
    _browser()
    output = tmp_path / "three.html"
    result = CliRunner().invoke(main, ["report", *(str(tiny_bert_runs[p]) for p in ("fp32", "fp16", "int8")), "--output", str(output)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    seen, size = _check_in_browser(output, tmp_path / "three.png",
                                   {"compare-latency", "compare-speedup", "compare-parity", "compare-profile"} | BERT_PLOTS)
    kinds = [plot["kind"] for plot in seen.plots]
    assert kinds.count("latency") == 3 and kinds.count("fusion") == 3
    page = output.read_text()
    for precision in ("fp16", "int8"):  # each run's own precision is on the page
        assert f"precision=&quot;{precision}&quot;" in page
    print(f"three-run page: {size / 1024:.0f} KB, {len(seen.plots)} plots, {seen.page_height} px tall")


@pytest.fixture(scope="module")
def tiny_gpt2_run(tmp_path_factory):
    if "gpt2" not in {entry_point.name for entry_point in importlib.metadata.entry_points(group="tfopt")}:
        pytest.skip("needs the gpt2 adapter (PyTorch deployment)")
    out = tmp_path_factory.mktemp("gpt2") / "run"
    options = ("verify_cases=6", "bench_repeat=3", "bench_warmup=1", "bench_batch_sizes=1", "bench_past_lengths=4,16",
               "bench_prompt_lengths=8", "bench_generate_tokens=2")
    args = ["-q", "run", "--plugin", "gpt2", "--model", "tiny-gpt2", "--output", str(out)]
    for option in options:
        args += ["--option", option]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_gpt2_run_page_renders_in_chromium(tiny_gpt2_run, tmp_path):
    _browser()
    seen, size = _check_in_browser(tiny_gpt2_run / "report.html", tmp_path / "gpt2.png", {"fusion", "parity-cases", "latency", "speedup"})
    page = (tiny_gpt2_run / "report.html").read_text()
    assert "decode b1 past 16" in page and "prompt b1 s8" in page
    print(f"gpt2 page: {size / 1024:.0f} KB, {len(seen.plots)} plots")


def test_a_broken_plot_would_be_caught(tmp_path):
    """The browser check itself: a page with a script error and an empty figure fails it."""
    _browser()
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
                    "<figure class='plot' data-plot='empty'><svg width='0' height='0'></svg></figure>"
                    "<script>console.error('drawn wrong'); undefinedFunction();</script></body></html>")
    seen = check_page(page)
    assert any("drawn wrong" in error for error in seen.errors) and any("undefinedFunction" in error for error in seen.errors)
    assert seen.plots == [{"kind": "empty", "svgs": 1, "width": 0, "height": 0, "marks": 0, "texts": 0}]


def test_copy_of_a_report_is_not_changed_by_rendering(tmp_path):
    report = _report()
    before = copy.deepcopy(report)
    render_page([RunData("run", tmp_path, report, report["profile"])])
    assert report == before
    write_report_page([_write_run(tmp_path / "r", report)], tmp_path / "r.html")
    assert (tmp_path / "r.html").stat().st_mode & 0o044  # readable by others, like report.json


def test_run_writes_report_html_and_a_page_that_cannot_be_drawn_is_a_warning(installed, monkeypatch, tmp_path):
    installed("fake_a")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "--plugin", "fake_a", "--output", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "fake_a" in page and page.startswith("<!DOCTYPE html>")

    import tfopt.html_report

    def broken(report, run_dir):
        raise ValueError("no fonts")

    monkeypatch.setattr(tfopt.html_report, "page_for_report", broken)
    result = CliRunner().invoke(main, ["run", "--plugin", "fake_a", "--output", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert "report.html not written: ValueError: no fonts" in report["warnings"]
    assert not (out / "report.html").exists()  # the earlier run's page went with its other outputs


def test_page_lists_how_the_precision_was_reached(tmp_path):
    report = _report(convert_precision={"model_path": "optimized.int4.onnx", "precision": "int4", "notes": ["rounded by GPTQ <calibrated>"]})
    page = render_page([RunData("run", tmp_path, report, None)])
    assert "<li>rounded by GPTQ &lt;calibrated&gt;</li>" in page
    assert "<ul class='muted'>" not in render_page([RunData("run", tmp_path, _report(), None)])
