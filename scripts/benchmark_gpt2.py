"""GPT-2 decoding: ORT on the raw export vs tfopt fp32 / int8 / int4, against the machine's limits, one run.

Speed: a random-weight GPT-2 (GPT-2 small's shape by default) exported by the gpt2 adapter,
fused by tfopt and quantized (int8: weight-only MatMulNBits 8-bit, the adapter's choice, and
dynamic; int4: weight-only MatMulNBits; LM head quantized, plus int4 with the head kept fp32). The decode step (one new token, past P) is
timed through IO binding, engines interleaved round by round, with an A/A control (a second
session of the raw export). Each engine's bytes per step (weights streamed + KV cache
read) over its latency is compared with the DRAM bandwidth measured in the same run.

Quality (random logits are flat, so on a trained model): stdlib-gpt2, trained here on the
standard library's docstrings (cached), fused and quantized the same way, its weight-only
models rounded by GPTQ calibrated on training text (as the gpt2 adapter does; round-to-nearest
rows beside them); next-token top-1 agreement with fp32, perplexity change and greedy
generation over 32 tokens on held-out text.

Usage: python scripts/benchmark_gpt2.py [--model gpt2-small-random] [--exporter dynamo]
       [--batch 1,8] [--past 128] [--rounds 7] [--per-round 5] [--quality-model stdlib-gpt2]
       [--no-quality] [--markdown docs/benchmark-gpt2.md]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import _machine_limits as limits


def _say(message: str) -> None:
    print(message, flush=True)


def build(model: str, exporter: str, work: Path, *, head_fp32_int4: bool = True):
    """(source, {label: model path}) for the raw export, tfopt fp32, int8 and int4.

    Weight-only models are rounded as the gpt2 adapter rounds them: GPTQ calibrated on training
    text for the trained text models (plus round-to-nearest rows to compare), nearest otherwise.
    """
    from tfopt.graph import fuse_file
    from tfopt.precision import convert
    from tfopt.results import RunContext
    from tfopt_gpt2.cache import source_model
    from tfopt_gpt2.export import export_source
    from tfopt_gpt2.precision import calibration_for

    ctx = RunContext(family="gpt2", source=model, work_dir=work, options={"exporter": exporter}, progress=_say)
    exported = export_source(ctx)
    fused = fuse_file(exported.model_path, work / "optimized.onnx", exported.info)
    _say(f"fused {model}: {dict(sorted(fused.op_counts.items()))}")
    models = {"ort:raw": exported.model_path, "ort:tfopt fp32": fused.model_path}
    calibration = calibration_for(ctx, "int4", "weight_only")
    _say(f"quantizing ({'GPTQ' if calibration else 'round-to-nearest'}): int8 weight-only (the gpt2 adapter's int8), int8 dynamic, int4 ...")
    models["ort:tfopt int8"] = convert(fused.model_path, "int8", int8_method="weight_only", calibration=calibration).model_path
    models["ort:tfopt int8 dynamic"] = convert(fused.model_path, "int8", work / "optimized.int8-dynamic.onnx").model_path
    models["ort:tfopt int4"] = convert(fused.model_path, "int4", calibration=calibration).model_path
    models["ort:tfopt int4 b16, head int8"] = convert(
        fused.model_path, "int4", work / "optimized.int4-b16-head8.onnx", lm_head="int8", int4_block_size=16, calibration=calibration
    ).model_path
    if head_fp32_int4:
        models["ort:tfopt int4, head fp32"] = convert(
            fused.model_path, "int4", work / "optimized.int4-headfp32.onnx", lm_head="fp32", calibration=calibration
        ).model_path
    if calibration is not None:
        _say("quantizing the same with round-to-nearest, to compare ...")
        models["ort:tfopt int8, nearest"] = convert(
            fused.model_path, "int8", work / "optimized.int8-nearest.onnx", int8_method="weight_only"
        ).model_path
        models["ort:tfopt int4, nearest"] = convert(fused.model_path, "int4", work / "optimized.int4-nearest.onnx").model_path
    return source_model(ctx), models


def speed(args, machine) -> list[str]:
    from tfopt.bench import ort_session
    from tfopt.feeds import session_feed
    from tfopt_gpt2.decoder import output_names
    from tfopt_gpt2.inputs import StepShape, feeds_for_shapes
    from tfopt_gpt2.sessions import bound_call

    work = Path(tempfile.mkdtemp(prefix="tfopt-gpt2-bench-"))
    source, models = build(args.model, args.exporter, work)
    engines = {"ort:raw": models["ort:raw"], "ort:raw (A/A)": models["ort:raw"], **{k: v for k, v in models.items() if k != "ort:raw"}}
    sessions = {label: ort_session(path) for label, path in engines.items()}
    weights = {label: limits.streamed_weight_bytes(path) for label, path in engines.items()}
    names = output_names(source)
    lines = [
        f"## Decode step, {args.model} ({args.exporter} export): latency, ratio to ORT raw, fraction of DRAM bandwidth",
        "",
        f"{args.rounds} rounds x {args.per_round} calls, engines interleaved in each round; ratio = median over rounds of the "
        "within-round ratio [lowest, highest]; bytes/step = weights streamed + KV cache read; GB/s = bytes/step / latency.",
        "",
        "| batch | past | engine | ms | vs ORT raw [spread] | MB/step | GB/s | of DRAM BW |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch in args.batch:
        for past in args.past:
            _say(f"timing decode b={batch} past={past} ...")
            (feed,) = feeds_for_shapes(source, [StepShape(batch, past, 1)], seed=0, padded=False)
            calls = {label: bound_call(s, session_feed(s, feed), names, label) for label, s in sessions.items()}
            summary = limits.ratios(limits.rounds(calls, rounds=args.rounds, per_round=args.per_round), "ort:raw")
            kv = 2 * source.num_layers * batch * past * source.info.hidden_size * 4
            for label, row in summary.items():
                moved = weights[label] + kv
                rate = moved / (row.median_ms / 1e3) / 1e9
                lines.append(
                    f"| {batch} | {past} | {label} | {row.median_ms:.2f} | {row.ratio:.3f}x [{row.low:.3f}, {row.high:.3f}] | "
                    f"{moved / 1e6:.1f} | {rate:.1f} | {rate / machine.bandwidth_gbs:.0%} |"
                )
    return lines


def quality(args) -> list[str]:
    from tfopt.bench import ort_session
    import numpy as np

    from tfopt.text_quality import compare, window_logits, windows
    from tfopt_gpt2.textmodel import TEXT_MODELS, heldout_bytes

    work = Path(tempfile.mkdtemp(prefix="tfopt-gpt2-quality-"))
    source, models = build(args.quality_model, args.exporter, work)
    text = heldout_bytes()
    reference = ort_session(models["ort:tfopt fp32"])
    spec = TEXT_MODELS.get(args.quality_model)
    lines = [
        f"## Quality on held-out text: {args.quality_model} "
        + (f"({spec.n_layer} layers, hidden {spec.n_embd}, byte vocabulary, {spec.steps} training steps) " if spec else "")
        + "against tfopt fp32",
        "",
        "16 windows of 128 tokens (top-1 agreement over all 2048 positions, perplexity per byte); greedy generation: "
        "16 prompts of 32 tokens, 32 new tokens each; for each row that parts from fp32's, fp32's own top-1 minus "
        "top-2 logit at that step (its median over the windows' positions is printed below the table).",
        "",
        "| model | top-1 agreement | perplexity (fp32 -> this) | change | logit difference (std) | greedy rows identical "
        "| greedy tokens agreeing | fp32 top-1 gap where rows part |",
        "|---|---|---|---|---|---|---|---|",
    ]
    gaps = np.diff(np.sort(window_logits(reference, windows(text, 16, 128)), axis=-1)[..., -2:], axis=-1)
    footer = [
        "",
        f"fp32's own top-1 minus top-2 logit over the windows' positions: median {np.median(gaps):.3f}, "
        f"5th percentile {np.percentile(gaps, 5):.3f}, 1st percentile {np.percentile(gaps, 1):.3f}.",
    ]
    for label, path in models.items():
        if label == "ort:tfopt fp32":
            continue
        _say(f"quality of {label} ...")
        q = compare(reference, ort_session(path), text, window_count=16, prompt_count=16, new_tokens=32)
        lines.append(
            f"| {label} | {q.top1_agreement:.2%} | {q.reference_perplexity:.3f} -> {q.perplexity:.3f} | {q.perplexity_change:+.2%} | {q.logit_difference_std:.4f} | "
            f"{q.generation_rows_identical}/{q.generation_rows} | {q.generation_token_agreement:.1%} | "
            + (", ".join(f"{gap:.3f}" for gap in sorted(q.divergence_gaps)) or "-")
            + " |"
        )
    return lines + footer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-small-random")
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"])
    parser.add_argument("--batch", default="1,8", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--past", default="128", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--quality-model", default="stdlib-gpt2")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    import onnxruntime as ort
    import torch

    _say("measuring the machine's sgemm rate and DRAM bandwidth ...")
    machine = limits.measure()
    lines = [
        f"# GPT-2 benchmark ({time.strftime('%Y-%m-%d %H:%M')}, onnxruntime {ort.__version__}, torch {torch.__version__}, "
        f"CPU x{os.cpu_count()})",
        "",
        limits.MachineLimits.line(machine),
        "",
    ]
    if not args.no_speed:
        lines += speed(args, machine) + [""]
    if not args.no_quality:
        lines += quality(args) + [""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
