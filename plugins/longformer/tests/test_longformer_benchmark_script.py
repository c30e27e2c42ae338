"""scripts/benchmark_longformer.py runs end to end at a small size and reports every engine (slow: ~1-2 min)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "benchmark_longformer.py"


@pytest.mark.slow
def test_benchmark_script_small(tmp_path):
    out = tmp_path / "bench.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--lengths", "512", "--layers", "1", "--repeat", "1", "--markdown", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    assert "ISA:" in text
    for heading in ("Self-attention alone", "End to end", "Peak RSS"):
        assert heading in text
    row = next(line for line in text.splitlines() if line.startswith("| 512 |") and "e-0" in line)
    assert float(row.split("|")[-2]) <= 1e-5  # the extension's max difference vs HF
