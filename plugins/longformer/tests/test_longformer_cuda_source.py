"""The CUDA kernel source compiles (structural only: no GPU here, its numerics are untested).

nvcc compiles the torch-free kernel part (-DTFOPT_KERNEL_ONLY). The torch glue at the end of the
file needs torch's CUDA headers, which a CPU wheel does not ship complete (no
c10/cuda/impl/cuda_cmake_macros.h), so it is compiled only where torch has CUDA.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tfopt_longformer.extension import CUDA_SOURCE

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_cuda_kernel_compiles_with_nvcc(tmp_path):
    target = tmp_path / "kernel.o"
    result = subprocess.run(
        [NVCC, "-c", "-std=c++17", "-DTFOPT_KERNEL_ONLY", str(CUDA_SOURCE), "-o", str(target)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert target.stat().st_size > 0
    symbols = subprocess.run(["nm", "-C", str(target)], capture_output=True, text=True).stdout
    assert "launch_local_attention" in symbols
