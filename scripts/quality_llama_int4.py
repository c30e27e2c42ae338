"""int4 quality on `stdlib-llama` (trained here): tfopt's blocks of 32/64/128, GPTQ and nearest, against onnxruntime-genai's int4.

Next-token top-1 agreement with fp32 on 16 held-out windows of 120 tokens (``tfopt.text_quality``:
the windows ``compare`` scores), for

- tfopt: the llama adapter's export, fusion and ``convert_precision`` hook at ``int4_block_size``
  32, 64 and 128, ``weight_rounding`` gptq (calibrated on the training text) and nearest;
- onnxruntime-genai's model builder on the same trained weights (``-p int4 -e cpu``: symmetric blocks,
  rounded to nearest; default blocks of 32, and ``--extra_options block_size=128``), scored against
  its own fp32 build (which is checked against tfopt's fp32 on the same windows).

Usage: python scripts/quality_llama_int4.py [--work /tmp/tfopt-llama-int4-quality] [--skip-genai]
A few minutes (stdlib-llama is trained once and cached under ~/.cache/tfopt).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WINDOWS, LENGTH = 16, 120  # as plugins/llama/tests/test_llama_quantized.py scores them


def held_out_windows() -> np.ndarray:
    from tfopt.text_quality import windows
    from tfopt.textmodel import heldout_bytes

    return windows(heldout_bytes(), WINDOWS, LENGTH + 1)[:, :-1]


def first_step_logits(session, ids: np.ndarray, head_size: int) -> np.ndarray:
    """Logits of whole windows with an empty past, for tfopt's and genai's input conventions alike."""
    feed = {"input_ids": ids, "attention_mask": np.ones(ids.shape, np.int64),
            "position_ids": np.broadcast_to(np.arange(ids.shape[1]), ids.shape).astype(np.int64)}
    wanted = {}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            wanted[spec.name] = np.zeros((ids.shape[0], spec.shape[1], 0, head_size), np.float32)
        elif spec.name in feed:
            wanted[spec.name] = feed[spec.name].astype(np.int32 if spec.type == "tensor(int32)" else np.int64)
    return session.run(["logits"], wanted)[0]


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float((reference.argmax(-1) == candidate.argmax(-1)).mean())


def tfopt_rows(work: Path, ids: np.ndarray, head_size: int) -> tuple[list[str], np.ndarray]:
    from tfopt.bench import ort_session
    from tfopt.graph import fuse_file
    from tfopt.results import RunContext
    from tfopt_llama.export import export_source
    from tfopt_llama.hooks import convert_precision_hook

    ctx = RunContext(family="llama", source="stdlib-llama", work_dir=work / "tfopt")
    exported = export_source(ctx)
    fused = fuse_file(exported.model_path, work / "tfopt" / "optimized.onnx", exported.info)
    reference = first_step_logits(ort_session(fused.model_path), ids, head_size)
    rows = []
    for rounding in ("gptq", "nearest"):
        for block in (32, 64, 128):
            ctx.options = {"precision": "int4", "int4_block_size": block, "weight_rounding": rounding}
            converted = convert_precision_hook(ctx, fused)
            score = agreement(reference, first_step_logits(ort_session(converted.model_path), ids, head_size))
            rows.append(f"| tfopt | {rounding} (asymmetric) | {block} | {score:.1%} |")
            print(rows[-1], flush=True)
    return rows, reference


def genai_rows(work: Path, ids: np.ndarray, head_size: int, tfopt_reference: np.ndarray) -> list[str]:
    from tfopt.bench import ort_session
    from tfopt_llama.textmodel import trained_model

    sys.path.insert(0, str(REPO / "scripts"))
    from benchmark_llama import _tokenizer  # the builder wants a tokenizer in the directory; any will do

    hf_dir = work / "genai" / "hf"
    trained_model("stdlib-llama").save_pretrained(hf_dir)
    _tokenizer().save_pretrained(hf_dir)

    def build(precision: str, block: int | None) -> Path:
        out = work / "genai" / (precision if block is None else f"{precision}-b{block}")
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
                   "-p", precision, "-e", "cpu", "-c", str(work / "genai" / "cache")]
        if block is not None:
            command += ["--extra_options", f"block_size={block}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"onnxruntime-genai's builder failed:\n{done.stderr[-2000:]}")
        return out / "model.onnx"

    reference = first_step_logits(ort_session(build("fp32", None)), ids, head_size)
    drift = float(np.abs(reference - tfopt_reference).max())
    rows = [f"| genai fp32 against tfopt fp32 | - | - | {agreement(tfopt_reference, reference):.1%} (max abs difference {drift:.1e}) |"]
    print(rows[-1], flush=True)
    for block in (None, 128):
        score = agreement(reference, first_step_logits(ort_session(build("int4", block)), ids, head_size))
        rows.append(f"| genai | nearest (symmetric) | {block or '32 (default)'} | {score:.1%} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tfopt-llama-int4-quality"))
    parser.add_argument("--skip-genai", action="store_true")
    args = parser.parse_args()
    from tfopt_llama.textmodel import TEXT_MODELS

    spec = TEXT_MODELS["stdlib-llama"]
    head_size = spec.hidden // spec.heads
    shutil.rmtree(args.work, ignore_errors=True)
    ids = held_out_windows()
    print("| engine | rounding | block | top-1 agreement with fp32 |\n|---|---|---|---|", flush=True)
    _, reference = tfopt_rows(args.work, ids, head_size)
    if not args.skip_genai:
        genai_rows(args.work, ids, head_size, reference)


if __name__ == "__main__":
    main()
