"""The adapter as the host sees it: entry point, registration, and a whole run through the host's pipeline."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pluggy

import tfopt.hookspecs
import tfopt_gpt2


def test_entry_point_names_the_package():
    (entry,) = [ep for ep in entry_points(group="tfopt") if ep.name == "gpt2"]
    assert entry.value == "tfopt_gpt2" and entry.load() is tfopt_gpt2


def test_registers_its_five_hooks():
    import tfopt_gpt2.export  # noqa: F401  (rebinds the package's `export` attribute to the submodule)
    import tfopt_gpt2.precision  # noqa: F401  (a submodule named like no hook: nothing is hidden)

    manager = pluggy.PluginManager("tfopt")
    manager.add_hookspecs(tfopt.hookspecs)
    manager.register(tfopt_gpt2, name="gpt2")
    hooks = {caller.name for caller in manager.get_hookcallers(tfopt_gpt2)}
    assert hooks == {"export", "convert_precision", "make_dummy_inputs", "verify", "benchmark"}


def test_whole_run_through_the_host(tmp_path):
    """export -> fuse (host default) -> fp32 -> dummy inputs -> verify -> benchmark, and report.json."""
    from tfopt.testing import check_adapter

    options = {
        "exporter": "legacy", "cases": 6, "verify_cases": 12, "bench_batch_sizes": [2], "bench_past_lengths": [4],
        "bench_prompt_lengths": 5, "bench_generate_tokens": 4,
    }
    outcome = check_adapter("gpt2", "tiny-gpt2", options, work_dir=tmp_path, expect_full_fusion=False)
    assert outcome is not None
    report = json.loads(next(tmp_path.rglob("report.json")).read_text())
    text = json.dumps(report)
    assert '"top1_agreement": 1.0' in text and '"max_abs_percentiles"' in text and '"past_length": 4' in text
