"""Build (once) and load the C++ Longformer attention extension, ``torch.ops.tfopt_longformer.attention``.

Why JIT with a persistent cache rather than a compiled wheel: a setup.py build of a torch
extension needs torch inside pip's isolated build environment, which downloads a multi-GB
torch there. Compiling on first use against the torch that is installed avoids that and
always matches its ABI. The objects are cached under ``$TFOPT_CACHE_DIR`` (default
``~/.cache/tfopt``) in a folder keyed by the sources, torch's version and the CUDA switch,
so a later process loads the library in milliseconds; ``scripts/install.sh`` builds it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Callable

import torch

from tfopt.errors import TfoptError, first_line
from tfopt.run_cache import cache_root

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CPU_SOURCE = CSRC / "longformer_attention.cpp"
CUDA_SOURCE = CSRC / "longformer_attention_cuda.cu"
IMPLS = {"aten": 0, "loops": 1}
_LOCK = threading.Lock()
_LOADED = False


def _packaged_sources() -> list[Path]:
    if not CPU_SOURCE.is_file():
        raise TfoptError(f"the extension's source {CPU_SOURCE} is missing (install tfopt-longformer from its source tree)")
    return [CPU_SOURCE]


def with_cuda() -> bool:
    """Compile the CUDA kernel too: only when this torch was built with CUDA and nvcc is there."""
    from torch.utils.cpp_extension import CUDA_HOME

    return bool(torch.version.cuda) and CUDA_HOME is not None and CUDA_SOURCE.is_file()


def cache_dir() -> Path:
    root = cache_root()
    digest = hashlib.sha256()
    for path in _packaged_sources() + ([CUDA_SOURCE] if with_cuda() else []):
        digest.update(path.read_bytes())
    digest.update(f"{torch.__version__} {sys.version_info[:2]} cuda={with_cuda()}".encode())
    return root / "longformer-extension" / digest.hexdigest()[:16]


def _compiler_problem() -> str | None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) found: install one (Debian/Ubuntu: apt-get install g++)"
    try:
        from torch.utils.cpp_extension import verify_ninja_availability

        verify_ninja_availability()
    except RuntimeError:
        return "ninja is not installed: pip install ninja"
    return None


def load(progress: Callable[[str], None] = lambda message: None) -> None:
    """Make ``torch.ops.tfopt_longformer.attention`` available: load the cached build or compile it.

    Failing compilers are one-line :class:`TfoptError`s saying what to install; the full log
    stays in the cache folder.
    """
    global _LOADED
    with _LOCK:
        if _LOADED:
            return
        from torch.utils.cpp_extension import load as load_extension

        build = cache_dir()
        library = build / "tfopt_longformer_ext.so"
        if not library.is_file():
            problem = _compiler_problem()
            if problem:
                raise TfoptError(f"cannot build the Longformer attention extension: {problem}")
            progress(f"compiling the Longformer attention extension into {build} (once, ~30-60 s) ...")
        build.mkdir(parents=True, exist_ok=True)
        sources = [str(p) for p in _packaged_sources()]
        flags = ["-O3", "-fopenmp"]
        if with_cuda():
            sources.append(str(CUDA_SOURCE))
            flags.append("-DTFOPT_WITH_CUDA")
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                load_extension(
                    name="tfopt_longformer_ext",
                    sources=sources,
                    build_directory=str(build),
                    extra_cflags=flags,
                    extra_cuda_cflags=["-O3"],
                    extra_ldflags=["-fopenmp"],
                    is_python_module=False,
                    verbose=False,
                )
        except Exception as exc:
            (build / "build-error.log").write_text(log.getvalue() + "\n" + str(exc))
            raise TfoptError(
                f"building the Longformer attention extension failed ({first_line(exc)}); "
                f"log: {build / 'build-error.log'}; a C++17 compiler (g++ >= 9) and ninja are needed"
            ) from None
        _register_fake()
        _LOADED = True


def _register_fake() -> None:
    """Shapes without computing, so torch.export / dynamo trace through the op."""

    @torch.library.register_fake("tfopt_longformer::attention")
    def _(input, weight, bias, mask, global_weight, global_bias, global_, num_heads, window, impl=1):
        torch._check(input.dim() == 3)
        return torch.empty_like(input)


def attention(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor,
    global_weight: torch.Tensor,
    global_bias: torch.Tensor,
    is_global: torch.Tensor,
    num_heads: int,
    window: int,
    impl: str = "loops",
) -> torch.Tensor:
    """Call the op (loading it first); arguments as ONNX Runtime's LongformerAttention, see csrc/."""
    load()
    if impl not in IMPLS:
        raise TfoptError(f"unknown Longformer attention implementation {impl!r}; known: {', '.join(IMPLS)}")
    return torch.ops.tfopt_longformer.attention(
        hidden, weight, bias, mask, global_weight, global_bias, is_global, num_heads, window, IMPLS[impl]
    )


def main() -> int:
    """``python -m tfopt_longformer.extension``: build (or find) the extension; one line either way."""
    try:
        load(lambda message: print(f"tfopt-longformer: {message}", flush=True))
    except TfoptError as exc:
        print(f"tfopt-longformer: error: {exc}", file=sys.stderr)
        return 2
    print(f"tfopt-longformer: attention extension ready in {cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
