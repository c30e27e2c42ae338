"""scripts/benchmark_encoders.py end to end on tiny configs: every engine and optimizer row is there for each family."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the TensorFlow deployment has none
pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_encoders.py"


@pytest.mark.slow  # two exports, four optimizer subprocesses and the machine's sgemm/bandwidth probe: ~1 min on 2 cores
def test_tiny_run_prints_every_row_for_the_chosen_families(tmp_path):
    markdown = tmp_path / "encoders.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--families", "bert,vit", "--rounds", "1", "--per-round", "1",
         "--work", str(tmp_path / "work"), "--markdown", str(markdown)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = markdown.read_text()
    assert text in proc.stdout
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| family")]
    for title in ("BERT-base (tiny)", "ViT-base/16 (tiny)"):
        mine = [row.split(" | ") for row in rows if row.startswith(f"| {title} ")]
        engines = {cells[1] for cells in mine}
        assert {"ort:raw", "ort:raw (A/A)", "ort:ort-transformers", "ort:tfopt"} <= engines, mine
        assert {"raw export (dynamo)", "ort-transformers", "tfopt"} <= engines, mine
        summary = [cells for cells in mine if cells[1] in ("s=32", "32x32")]
        assert len(summary) == 1 and summary[0][5].endswith("]"), summary  # tfopt / raw with its spread
        assert not any("failed" in row for row in map(" | ".join, mine)), mine
        tfopt = next(cells for cells in mine if cells[1] == "ort:tfopt")
        assert float(tfopt[-1].rstrip(" |")) < 1e-4  # parity with the raw export
        optimizer = next(cells for cells in mine if cells[1] == "tfopt")
        assert "MultiHeadAttention" in optimizer[5] and optimizer[6].startswith("none"), optimizer
    assert "machine (measured in this run): fp32 sgemm" in text
    assert not list((tmp_path / "work").glob("*/tfopt.onnx*")), "optimized models are removed after timing"
    assert list((tmp_path / "work").glob("bert-tiny-*/meta.json")), "the export is kept in --work for the next run"
