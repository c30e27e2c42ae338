"""Peak memory of optimizing a model beyond 2 GB: tfopt optimize (with and without validation), int4, ONNX Runtime's optimizer.

A random-weight (seeded) Llama at Llama-3.2-1B's shape (hidden 2048, 32 query / 8 KV heads,
head 64, intermediate 8192, vocab 128256, tied embeddings, 16 layers: 1.24 B parameters,
4.9 GB in fp32) is exported once as the llama adapter's decoding step (dynamo, external data),
then each tool runs on that file in a process of its own, and the process's peak resident set
(``ru_maxrss``, which counts the pages of memory-mapped weight files it touched as well) is
compared with the bytes of the model's weights:

- ``tfopt optimize --model_type llama`` (fusion + validation: the written model loads in
  ONNX Runtime and matches the input) and the same with ``--no-validate``;
- int4 conversion of the fused model (``tfopt.precision.convert``, weight-only ``MatMulNBits``);
- ``python -m onnxruntime.transformers.optimizer --model_type gpt2 --use_external_data_format``
  (ONNX Runtime's optimizer; no model type of its own fits a Llama);
- an ONNX Runtime session of the input, created and run once: what serving the model needs;
- ``tfopt run --plugin llama`` on the model's Hugging Face directory: export, fusion and
  verification against torch (which holds the model itself).

Usage: python scripts/benchmark_llama_memory.py [--work /tmp/llama-1b] [--layers 16] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(  # meta-llama/Llama-3.2-1B config.json (layers set by --layers)
    hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
    vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001, hidden_act="silu",
    rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192),
)
REAL_LAYERS = 16


def say(message: str) -> None:
    print(message, flush=True)


def export(path: Path, hf_dir: Path, layers: int) -> None:
    """Build the random model, save it as a local Hugging Face directory (for ``tfopt run``) and
    export its decoding step (the llama adapter's convention) with external data."""
    import numpy as np
    import torch
    import transformers
    from tfopt import causal_lm
    from tfopt.torch_kit import quiet_export

    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=layers, **SHAPE)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # all-ones RMSNorm weights would be shared by the exporter; make each its own
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(hf_dir)
    step = causal_lm.decoder_step(model, layers, lm_head=True)
    feed = causal_lm.step_feed(causal_lm.StepShape(2, 5, 3), num_layers=layers, num_heads=SHAPE["num_key_value_heads"],
                               head_size=SHAPE["head_dim"], vocab_size=SHAPE["vocab_size"], rng=np.random.default_rng(0))
    dynamic = torch.export.Dim.DYNAMIC
    tokens = {0: dynamic, 1: dynamic}
    past = tuple({0: dynamic, 2: dynamic} for _ in causal_lm.past_names(layers))
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_export():
        torch.onnx.export(
            step, causal_lm.torch_feed(feed, layers), str(path), dynamo=True,
            dynamic_shapes=(tokens, tokens, tokens, past), input_names=causal_lm.input_names(layers),
            output_names=["logits", *causal_lm.present_names(layers)], opset_version=20, external_data=True,
        )


def weight_bytes(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for tensor in model.graph.initializer:
        size = next((int(e.value) for e in tensor.external_data if e.key == "length"), None)
        total += size if size is not None else len(tensor.raw_data)
    return total


def measured(command: list[str], label: str) -> dict:
    """Run ``command`` as the only child of a fresh interpreter; its exit code, peak RSS and wall time."""
    probe = (
        "import resource, subprocess, sys, time, json\n"
        "start = time.perf_counter()\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps({'rc': code, 'peak_bytes': peak, 'seconds': time.perf_counter() - start}))\n"
    )
    say(f"{label} ...")
    scratch = Path(tempfile.mkdtemp(prefix="tfopt-memory-"))  # TMPDIR of the child: what a killed one leaves goes too
    try:
        done = subprocess.run([sys.executable, "-c", probe, *command], stdout=subprocess.PIPE, text=True,  # stderr shown
                              env={**os.environ, "TMPDIR": str(scratch)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{label}: the probe failed")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    state = "" if result["rc"] == 0 else f" (failed: exit code {result['rc']}{', killed: out of memory' if result['rc'] == -9 else ''})"
    say(f"  peak {result['peak_bytes'] / 1e9:.2f} GB in {result['seconds']:.0f} s{state}")
    return result


SESSION_RUN = (
    "import sys, numpy as np, onnxruntime as ort\n"
    "from tfopt.feeds import session_feed\n"
    "from tfopt.graph.validate import validation_feeds\n"
    "options = ort.SessionOptions()\n"
    "options.log_severity_level = 4  # a feed the graph refuses is tried quietly\n"
    "session = ort.InferenceSession(sys.argv[1], options, providers=['CPUExecutionProvider'])\n"
    "for feeds in validation_feeds(sys.argv[1]):  # the first set of generated feeds the graph accepts\n"
    "    try:\n"
    "        session.run(None, session_feed(session, feeds[0]))\n"
    "        break\n"
    "    except Exception:\n"
    "        continue\n"
    "else:\n"
    "    sys.exit('no generated feed runs')\n"
)

INT4 = (
    "import logging, sys\n"
    "logging.getLogger('onnxruntime').setLevel(logging.WARNING)  # its quantizer logs every node at INFO\n"
    "from tfopt.precision import convert\n"
    "convert(sys.argv[1], 'int4', sys.argv[2])\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/llama-1b"))
    parser.add_argument("--layers", type=int, default=REAL_LAYERS)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--only", type=lambda text: set(text.split(",")), default=None,
                        help="comma-separated rows: session,no-validate,validated,int4,ort,run")
    args = parser.parse_args()
    raw = args.work / "raw" / "model.onnx"
    hf_dir = args.work / "hf"
    if not raw.exists():
        say(f"building and exporting the model ({args.layers} layers) ...")
        start = time.perf_counter()
        export(raw, hf_dir, args.layers)
        say(f"exported in {time.perf_counter() - start:.0f} s")
    weights = weight_bytes(raw)
    say(f"weights: {weights / 1e9:.2f} GB")
    tfopt = [sys.executable, "-m", "tfopt"]
    fused = args.work / "fused" / "model.onnx"
    rows = []

    def row(key: str, label: str, command: list[str], target: float | None, cleanup: Path | None = None) -> None:
        if args.only and key not in args.only:
            return
        result = measured(command, label)
        rows.append(dict(label=label, target=target, **result))
        if cleanup is not None:
            for file in cleanup.parent.glob(cleanup.name + "*"):
                file.unlink()

    row("session", "ONNX Runtime session of the input (load + one run)", [sys.executable, "-c", SESSION_RUN, str(raw)], None)
    optimize = [*tfopt, "-q", "optimize", "--input", str(raw), "--output", str(fused), "--model_type", "llama"]
    row("no-validate", "tfopt optimize --no-validate", [*optimize, "--no-validate"], 0.3, cleanup=fused)
    row("validated", "tfopt optimize (validated)", optimize, 1.5)
    int4 = args.work / "int4" / "model.onnx"
    int4.parent.mkdir(parents=True, exist_ok=True)
    if not fused.exists() and (not args.only or "int4" in args.only):
        measured(optimize, "tfopt optimize (the int4 conversion's input)")
    row("int4", "int4 conversion of the fused model", [sys.executable, "-c", INT4, str(fused), str(int4)], 1.0, cleanup=int4)
    ort_out = args.work / "ort" / "model.onnx"
    ort_out.parent.mkdir(parents=True, exist_ok=True)
    row("ort", "ONNX Runtime's optimizer (--model_type gpt2)",
        [sys.executable, "-m", "onnxruntime.transformers.optimizer", "--input", str(raw), "--output", str(ort_out),
         "--model_type", "gpt2", "--num_heads", str(SHAPE["num_attention_heads"]), "--hidden_size", str(SHAPE["hidden_size"]),
         "--use_external_data_format"], None, cleanup=ort_out)
    run_dir = args.work / "run"
    # fp32: int4 on these random weights moves the logits to cosine 0.87, below validation's 0.95 guard
    # (ONNX Runtime's own quantizer: 0.87 too); trained weights keep 0.99+
    row("run", "tfopt run --plugin llama --no-benchmark (export, fuse, verify against torch)",
        [*tfopt, "-q", "run", "--plugin", "llama", "--model", str(hf_dir), "--no-benchmark", "--output", str(run_dir)], None)
    lines = [
        f"Weights: {weights / 1e9:.2f} GB ({args.layers} layers).", "",
        "| process | peak RSS GB | x weights | target | wall s |", "|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["peak_bytes"] / weights
        target = "" if r["target"] is None else f"<= {r['target']}x: {'MET' if ratio <= r['target'] and r['rc'] == 0 else 'NOT MET'}"
        failed = "" if r["rc"] == 0 else f" (failed: exit code {r['rc']}{', killed: out of memory' if r['rc'] == -9 else ''})"
        lines.append(f"| {r['label']}{failed} | {r['peak_bytes'] / 1e9:.2f} | {ratio:.2f} | {target} | {r['seconds']:.0f} |")
    say("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if any(r["rc"] != 0 for r in rows if r["target"] is not None):
        sys.exit("a tfopt process failed (see above)")


if __name__ == "__main__":
    main()
