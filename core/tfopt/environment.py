"""The machine and library versions a run measured on, for report.json's ``environment``.

Figures from different machines (an AVX-512 Xeon, an AVX2-only EPYC) are only comparable
with the CPU and the versions beside them. Read cheaply: package metadata, not imports.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

PACKAGES = (
    "onnxruntime", "onnx", "onnxscript", "onnx-ir", "numpy",
    "torch", "transformers", "tensorflow", "tf-keras", "keras", "keras-hub", "tf2onnx",
)
# The instruction sets the kernels choose between (see FACTS.md: machines differ session to session).
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")


def _cpu() -> tuple[str, list[str]]:
    """CPU model name and the :data:`CPU_FLAGS` it has (Linux /proc/cpuinfo; elsewhere the platform's name)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), []
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name or platform.machine(), [flag for flag in CPU_FLAGS if flag in flags]


def environment() -> dict[str, Any]:
    """Python, OS, CPU (name, core count, instruction sets) and the installed versions of :data:`PACKAGES`."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    cpu, flags = _cpu()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_flags": flags,
        "packages": versions,
    }
