"""Encoder-decoder generation at real sizes: tfopt's fused pair against ONNX Runtime on the raw exports and torch.

For t5-small, bart-base and whisper-tiny shapes (random weights from the transformers config,
saved to a local directory and run through the seq2seq adapter as a user's model would be:
``tfopt_seq2seq`` export with torch's default exporter, then its fuse stage), b=1, it prints
(and with --markdown writes):
  - a decoding step (1 new token, past 32 and 128) over a source of 128 tokens (Whisper: 30 s of
    audio, 1500 encoder frames): p50 ms of torch eager (the decoder step module), ORT on the raw
    decoder export, the same again (a second session: the A/A control), ORT on tfopt's fused
    decoder in fp32, and with its weights in int8 and int4 (``MatMulNBits``, rounded to nearest:
    random weights carry no text to calibrate GPTQ on); engines interleaved
    in blocks, ratios to the raw export (target: tfopt <= 0.7x raw);
  - greedy generation of 32 tokens for one source, encoder included: transformers' ``generate``
    (eager torch), the raw pair and the fused pairs driven by ``tfopt.encoder_decoder`` (IO
    binding, no EOS so every engine writes all 32 tokens); torch/tfopt speed-up (target >= 2x);
  - whether the fp32 engines' generated tokens are identical (int8/int4: the share of tokens torch also wrote).
Every ONNX Runtime session: intra-op spinning off (``session.intra_op.allow_spinning=0``), so an
idle session's threads do not steal the cores from the engine timed next; torch's threads likewise
(``OMP_WAIT_POLICY=PASSIVE`` unless set).

Usage: python scripts/benchmark_seq2seq.py [--families t5,bart,whisper] [--repeat 30] [--markdown FILE] [--tiny]
About 10 minutes on a quiet 2-core machine, exports included. --tiny shrinks every config for a smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _machine_limits as limits

REPO = Path(__file__).resolve().parents[1]
BANDWIDTH_METHOD = "the faster of ONNX Runtime's ReduceSum over 1 GiB and numpy's sum over 1.5 GiB, all cores"
SOURCE_TOKENS, NEW_TOKENS, PASTS = 128, 32, (32, 128)


def configs(tiny: bool) -> dict:
    import transformers

    if tiny:
        shape = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                     encoder_ffn_dim=128, decoder_ffn_dim=128)
        return {
            "t5": transformers.T5Config(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                        decoder_start_token_id=0),
            "bart": transformers.BartConfig(vocab_size=1000, **shape, max_position_embeddings=256, forced_eos_token_id=None),
            "whisper": transformers.WhisperConfig(vocab_size=1000, **shape, num_mel_bins=16, max_source_positions=20,
                                                  max_target_positions=256, decoder_start_token_id=1, pad_token_id=0,
                                                  bos_token_id=1, eos_token_id=2),
        }
    return {  # the published checkpoints' shapes
        "t5": transformers.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                                    decoder_start_token_id=0),
        "bart": transformers.BartConfig(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
                                        encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                                        decoder_ffn_dim=3072, max_position_embeddings=1024, forced_eos_token_id=None),
        "whisper": transformers.WhisperConfig(vocab_size=51865, d_model=384, encoder_layers=4, decoder_layers=4,
                                              encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536,
                                              decoder_ffn_dim=1536, num_mel_bins=80, max_source_positions=1500,
                                              max_target_positions=448, decoder_start_token_id=50258),
    }


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(family: str, config, work: Path, repeat: int) -> dict:
    from tfopt import precision as host_precision
    from tfopt.bench import time_interleaved
    from tfopt import encoder_decoder as names
    from tfopt.results import RunContext
    from tfopt_seq2seq import step as steps
    from tfopt_seq2seq.export import ENCODER_OUTPUTS, export_source
    from tfopt_seq2seq.generate import generate_torch
    from tfopt_seq2seq.graphs import fuse_pair
    from tfopt_seq2seq.models import random_model
    from tfopt_seq2seq.source import source_model

    from tfopt.torch_kit import no_progress_bar

    directory = work / f"{family}-model"
    with no_progress_bar():
        random_model(config).save_pretrained(directory)
    ctx = RunContext(family="seq2seq", source=str(directory), work_dir=work / family, options={})
    started = time.perf_counter()
    exported = export_source(ctx)
    fused = fuse_pair(ctx, exported)
    prepared = time.perf_counter() - started
    outputs = ctx.results["extra_outputs"]
    source = source_model(ctx)
    source = dataclasses.replace(source, eos_token_id=None)  # every engine writes every token
    row = {"family": family, "prepare_s": prepared, "missing": fused.missing, "leftover": fused.leftover,
           "fused": {k: v for k, v in fused.op_counts.items() if "Attention" in k or "Norm" in k or "Gelu" in k}}
    decoders = {"ort:raw": exported.model_path, "ort:raw (A/A)": exported.model_path, "ort:tfopt": fused.model_path}
    for precision in ("int8", "int4"):
        decoders[f"ort:tfopt {precision}"] = host_precision.convert(fused.model_path, precision, int8_method="weight_only").model_path
    sessions = {label: session(path) for label, path in decoders.items()}
    module, encoder = steps.decoder_step(source), steps.encoder_step(source)
    rng = np.random.default_rng(0)
    encoded = steps.encoder_feed(source, 1, SOURCE_TOKENS, rng)
    if names.ATTENTION_MASK in encoded:
        encoded[names.ATTENTION_MASK][:] = 1
    cross = steps.run_torch(encoder, steps.encoder_inputs(source), encoded)[1:]
    weights = {label: limits.streamed_weight_bytes(path) for label, path in decoders.items()}
    for past in PASTS:
        feed = steps.decoder_feed(source, encoded, cross, past, 1, rng)
        cache = sum(value.nbytes for value in feed.values() if value.dtype == np.float32)  # self past + cross keys/values
        row[f"step_past{past}_bytes"] = {label: weight + cache for label, weight in weights.items()}
        calls = {"torch": lambda feed=feed: steps.run_torch(module, steps.decoder_inputs(source), feed)}
        calls.update({label: (lambda s=s, feed=feed: s.run(steps.decoder_outputs(source), feed)) for label, s in sessions.items()})
        times = time_interleaved(calls, warmup=3, repeat=repeat)
        row[f"step_past{past}_ms"] = {label: float(np.median(t) * 1000) for label, t in times.items()}
    raw_encoder, fused_encoder = session(outputs[ENCODER_OUTPUTS["export"]]), session(outputs[ENCODER_OUTPUTS["fuse"]])
    pairs = {label: names.EncoderDecoder(raw_encoder if label == "ort:raw" else fused_encoder, s)
             for label, s in sessions.items() if label != "ort:raw (A/A)"}
    for pair in pairs.values():
        pair.tokens = dataclasses.replace(pair.tokens, eos_token_id=None)
    tokens = {"torch": generate_torch(source, encoded, NEW_TOKENS)}
    tokens.update({label: pair.generate(encoded, NEW_TOKENS) for label, pair in pairs.items()})
    row["tokens_identical"] = all(np.array_equal(tokens["torch"], tokens[label]) for label in ("ort:raw", "ort:tfopt"))
    row["same_tokens"] = {label: float((tokens["torch"] == tokens[label]).mean()) for label in tokens if "int" in label}
    calls = {"torch": lambda: generate_torch(source, encoded, NEW_TOKENS)}
    calls.update({label: (lambda pair=pair: pair.generate(encoded, NEW_TOKENS)) for label, pair in pairs.items()})
    times = time_interleaved(calls, warmup=1, repeat=max(5, repeat // 4), block=1)
    row["generate_ms"] = {label: float(np.median(t) * 1000) for label, t in times.items()}
    return row


def lines(rows: list[dict], bandwidth: float) -> list[str]:
    out = ["| family | decode step, past | torch ms | ORT raw ms | A/A | tfopt fp32 | tfopt int8 | tfopt int4 |",
           "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for past in PASTS:
            ms = row[f"step_past{past}_ms"]
            ratio = lambda label: f"{ms[label]:.2f} ms ({ms[label] / ms['ort:raw']:.2f}x)"  # noqa: E731
            out.append(f"| {row['family']} | {past} | {ms['torch']:.2f} | {ms['ort:raw']:.2f} | {ms['ort:raw (A/A)'] / ms['ort:raw']:.2f}x | "
                       f"{ratio('ort:tfopt')} | {ratio('ort:tfopt int8')} | {ratio('ort:tfopt int4')} |")
    out += ["", f"Bytes a step streams (every weight read in full but embedding tables a Gather reads a row of, "
            f"plus the self-attention past and the cross keys/values) against the DRAM read rate measured in this run "
            f"({bandwidth:.1f} GB/s: {BANDWIDTH_METHOD}); 'needs' is the rate a step of 0.7x ORT raw would have to stream at.", "",
            "| family | past | MB per step (fp32) | limit ms | ORT raw ms (% of limit) | tfopt fp32 ms (% of limit) | 0.7x raw ms | needs GB/s (% of measured) |",
            "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for past in PASTS:
            ms, nbytes = row[f"step_past{past}_ms"], row[f"step_past{past}_bytes"]["ort:tfopt"]
            limit = nbytes / bandwidth / 1e6
            target = 0.7 * ms["ort:raw"]
            needs = nbytes / target / 1e6
            out.append(f"| {row['family']} | {past} | {nbytes / 1e6:.0f} | {limit:.2f} | {ms['ort:raw']:.2f} ({limit / ms['ort:raw']:.0%}) | "
                       f"{ms['ort:tfopt']:.2f} ({limit / ms['ort:tfopt']:.0%}) | {target:.2f} | {needs:.1f} ({needs / bandwidth:.0%}) |")
    out += ["", f"| family | greedy generate, {NEW_TOKENS} tokens, b=1 | torch ms | ORT raw ms | tfopt fp32 ms | int8 ms | int4 ms "
            "| torch/tfopt fp32 | fp32 tokens identical | int8 / int4 tokens as torch's |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ms, same = row["generate_ms"], row["same_tokens"]
        out.append(f"| {row['family']} | | {ms['torch']:.1f} | {ms['ort:raw']:.1f} | {ms['ort:tfopt']:.1f} | {ms['ort:tfopt int8']:.1f} | "
                   f"{ms['ort:tfopt int4']:.1f} | {ms['torch'] / ms['ort:tfopt']:.2f}x | {row['tokens_identical']} | "
                   f"{same['ort:tfopt int8']:.0%} / {same['ort:tfopt int4']:.0%} |")
    out += ["", "| family | fused ops (encoder + decoder) | missing | primitives left | export + fuse s |", "|---|---|---|---|---|"]
    for row in rows:
        fused = ", ".join(f"{k} {v}" for k, v in sorted(row["fused"].items()))
        out.append(f"| {row['family']} | {fused} | {row['missing'] or 'none'} | {row['leftover'] or 'none'} | {row['prepare_s']:.0f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="t5,bart,whisper")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads
    import torch

    from tfopt.torch_kit import quiet_export

    wanted = [name.strip() for name in args.families.split(",") if name.strip()]
    all_configs = configs(args.tiny)
    unknown = sorted(set(wanted) - set(all_configs))
    if unknown:
        sys.exit(f"unknown families {unknown}; known: {', '.join(all_configs)}")
    # before any model is loaded; the faster reading is the limit (as benchmark_llama.py takes it)
    bandwidth = max(limits.measure_bandwidth(), limits.measure_numpy_bandwidth(threads=os.cpu_count() or 1))
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfopt-bench-seq2seq-") as scratch, quiet_export():
        for family in wanted:
            print(f"{family}: export, fuse, time ...", file=sys.stderr, flush=True)
            rows.append(measure(family, all_configs[family], Path(scratch), args.repeat))
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    header = [f"CPU: {cpu}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads, "
              f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}); ONNX Runtime sessions without intra-op spinning"]
    text = "\n".join(header + [""] + lines(rows, bandwidth))
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "plugins" / "seq2seq"))
    main()
