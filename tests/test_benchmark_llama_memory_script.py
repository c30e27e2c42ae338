"""scripts/benchmark_llama_memory.py at Llama-3.2-1B's shape (4.9 GB, past protobuf's 2 GB): tfopt's peaks stay within issue 18's targets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the TensorFlow deployment has none
pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_llama_memory.py"


@pytest.mark.slow  # the 4.9 GB model saved, exported and optimized three ways: ~4 min, 17 GB of RAM and 16 GB of disk
def test_optimize_and_int4_stay_within_their_memory_targets(tmp_path):
    """At Llama-3.2-1B's real depth, where the issue sets its targets. (With 5 layers, 2.3 GB, the tied
    head's 1 GB table weighs three times as much: validated 1.55x, int4 1.07x measured.)"""
    markdown = tmp_path / "memory.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "no-validate,validated,int4", "--work", str(tmp_path / "work"),
         "--markdown", str(markdown)],
        capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = markdown.read_text()
    weights = float(text.split("Weights: ")[1].split(" GB")[0])
    assert weights > 4.9  # beyond what one protobuf message holds
    ratios = {cells[0].lstrip("| "): float(cells[2]) for cells in (line.split(" | ") for line in text.splitlines())
              if len(cells) == 5 and cells[0].startswith("| ") and cells[2][:1].isdigit()}
    assert ratios["tfopt optimize --no-validate"] <= 0.3, ratios
    assert ratios["tfopt optimize (validated)"] <= 1.5, ratios
    assert ratios["int4 conversion of the fused model"] <= 1.0, ratios
