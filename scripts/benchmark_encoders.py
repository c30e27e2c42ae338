"""Encoder families at base size: tfopt against ONNX Runtime's own optimizer, all measured in this one run.

For each family (random weights from a transformers config at the real base size, every parameter
given +0.02*randn so no bias table is constant; b=1 at the family's natural shape: s=128 text,
s=77 CLIP text, 224x224 images, 30 s of audio = 3000 mel frames for Whisper) it prints (and with
--markdown writes):
  - p50 latency of ORT on the raw export, ORT on the raw export again (a second session: the A/A
    control, whose spread is the noise), ORT on ONNX Runtime's ``optimize_model`` output (the
    nearest model_type) and ORT on ``tfopt.optimize_model``'s output (tfopt's type name); engines
    interleaved round by round, each ratio taken within a round, with its spread over rounds;
  - the same for tfopt with ``cpu_layer_norm`` (residual LayerNorms as Sum + LayerNormalization,
    docs/fusions.md): the ``ort:tfopt-cpu-ln`` engine;
  - tfopt/raw and tfopt/ORT-optimizer ratios, the A/A ratio, and tfopt's GFLOP/s as a fraction of
    the fp32 sgemm rate measured at the start of the run (scripts/_machine_limits.py); FLOPs are the
    model's matmul and conv FLOPs on the benchmark input, counted by torch's FlopCounterMode with
    SDPA on its math path (so attention's two products count);
  - where the time goes, from ONNX Runtime's profiler on the raw export and on tfopt's output: the
    share of kernel time in GEMMs (MatMul, Gemm, Conv and their fused forms). The raw export's
    share is the floor of tfopt/raw for any graph rewrite that leaves the GEMMs as fast as they
    were (it would have to remove every other op's time entirely);
  - each optimizer's wall time and peak memory (each in a fresh subprocess), the fused ops it wrote,
    the primitives left unfused (tfopt's own ``stats.leftover``; the same counter on ORT's output),
    and each optimized model's max abs difference from the raw export on the benchmark input.
A failed export, optimizer (ORT's crashes on ModernBERT) or session is a row saying so, not an abort.

Exports use torch's dynamo exporter (Dim.DYNAMIC axes) except Swin and T5, where torch 2.13's
dynamo exporter fails: those use the legacy one. DeBERTa-v3's vocabulary is cut from 128100 to
32000 (a Gather table: it changes memory, not latency).

Usage: python scripts/benchmark_encoders.py [--families bert,vit] [--rounds 7] [--per-round 3]
       [--work DIR] [--markdown FILE] [--tiny]
The defaults are sized for a full run of about 15 minutes on a quiet 2-core machine, exports
included (they are about a third of it; with --work, a second run reuses them).
--work keeps the exports there and reuses them on the next run (they are keyed by config, shapes
and torch/transformers versions); without it a temporary folder is used and removed. --tiny
shrinks every config (2 layers, hidden 64, 32x32 images, 40 audio frames) for a smoke run.
Needs sympy (ONNX Runtime's optimizer imports it).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import _machine_limits as limits

REPO = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
TINY_SEQ = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=128, decoder_ffn_dim=128)


@dataclass(frozen=True)
class Family:
    title: str
    kind: str  # text | vision | audio
    tfopt_type: str  # tfopt's --model_type (core/tfopt/graph/model_types.py)
    ort_type: str  # ONNX Runtime optimizer's nearest model_type
    exporter: str  # dynamo | legacy
    config_class: str
    model_class: str  # transformers attribute, or module:attribute
    base: dict = field(default_factory=dict)  # config kwargs at the real base size
    tiny: dict = field(default_factory=dict)  # config kwargs for --tiny
    seq: int = 128  # text length (text families)
    note: str = ""


_DEBERTA_V3 = dict(
    vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=512, type_vocab_size=0, relative_attention=True, position_buckets=256,
    max_relative_positions=-1, pos_att_type=["p2c", "c2p"], position_biased_input=False, norm_rel_ebd="layer_norm",
    share_att_key=True, layer_norm_eps=1e-7, hidden_act="gelu",
)
_MODERNBERT_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
_WHISPER_BASE = dict(vocab_size=51865, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                     decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_mel_bins=80,
                     max_source_positions=1500)
_WHISPER_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)

FAMILIES = {
    "bert": Family("BERT-base", "text", "bert", "bert", "dynamo", "BertConfig", "BertModel",
                   tiny=dict(vocab_size=1000, **TINY), note="the reference"),
    "deberta": Family("DeBERTa-v3-base", "text", "deberta", "bert", "dynamo", "DebertaV2Config", "DebertaV2Model",
                      base=_DEBERTA_V3, tiny={**_DEBERTA_V3, "vocab_size": 1000, "position_buckets": 16, **TINY},
                      note="relative attention as microsoft/deberta-v3-base; vocab cut 128100 -> 32000"),
    "mpnet": Family("MPNet-base", "text", "mpnet", "bert", "dynamo", "MPNetConfig", "MPNetModel",
                    tiny=dict(vocab_size=1000, **TINY)),
    "modernbert": Family("ModernBERT-base", "text", "modernbert", "bert", "dynamo", "ModernBertConfig", "ModernBertModel",
                         base=dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152,
                                   vocab_size=50368, **_MODERNBERT_IDS),
                         tiny=dict(vocab_size=1000, max_position_embeddings=64, **TINY, **_MODERNBERT_IDS)),
    "vit": Family("ViT-base/16", "vision", "vit", "vit", "dynamo", "ViTConfig", "ViTModel",
                  tiny=dict(image_size=32, patch_size=8, **TINY)),
    "swin": Family("Swin-tiny", "vision", "swin", "swin", "legacy", "SwinConfig", "SwinModel",
                   tiny=dict(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4),
                   note="legacy export: torch 2.13's dynamo exporter fails on Swin"),
    "clip-vision": Family("CLIP ViT-B/32 vision", "vision", "clip", "clip", "dynamo", "CLIPVisionConfig", "CLIPVisionModel",
                          tiny=dict(image_size=32, patch_size=8, **TINY)),
    "clip-text": Family("CLIP ViT-B/32 text", "text", "clip", "clip", "dynamo", "CLIPTextConfig", "CLIPTextModel",
                        tiny=dict(vocab_size=1000, max_position_embeddings=32, **TINY), seq=77),
    "whisper": Family("Whisper-base encoder", "audio", "whisper", "bert", "dynamo", "WhisperConfig",
                      "transformers.models.whisper.modeling_whisper:WhisperEncoder",
                      base={**_WHISPER_BASE, **_WHISPER_IDS},
                      tiny=dict(vocab_size=1000, num_mel_bins=16, max_source_positions=20, **TINY_SEQ, **_WHISPER_IDS)),
    "t5": Family("T5-base encoder", "text", "t5", "t5", "legacy", "T5Config", "T5EncoderModel",
                 base=dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
                 tiny=dict(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                           relative_attention_num_buckets=8),
                 note="legacy export: torch 2.13's dynamo exporter fails on T5"),
    "bart": Family("BART-base encoder", "text", "bart", "bart", "dynamo", "BartConfig",
                   "transformers.models.bart.modeling_bart:BartEncoder",
                   base=dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                             decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                             max_position_embeddings=1024),
                   tiny=dict(vocab_size=1000, max_position_embeddings=64, **TINY_SEQ)),
}
INPUT_NAMES = {"text": ["input_ids", "attention_mask"], "vision": ["pixel_values"], "audio": ["input_features"]}
# tfopt-cpu-ln: tfopt with cpu_layer_norm (SkipLayerNormalization written as Sum + LayerNormalization)
OPTIMIZERS = ("ort-transformers", "tfopt", "tfopt-cpu-ln")
ENGINES = ("ort:raw", "ort:raw (A/A)", "ort:ort-transformers", "ort:tfopt", "ort:tfopt-cpu-ln")
# Ops whose time is the model's matrix products (ONNX Runtime's load-time fusions included).
GEMM_OPS = {"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Conv", "FusedConv", "NchwcConv", "MatMulNBits"}
PROFILE_SAMPLES = 10
# Ops counted as fused: every com.microsoft op, and the standard ops that stand for a fused sub-graph.
STANDARD_FUSED = {"Attention", "LayerNormalization", "RMSNormalization", "Gelu", "RotaryEmbedding"}


# ----------------------------------------------------------------------------- export (own subprocess)


def input_shape(family: Family, config: dict, tiny: bool) -> dict:
    """The benchmark input's sizes (b=1): sequence, image side or mel bins x frames."""
    if family.kind == "text":
        if tiny:
            return {"seq": 16 if family.seq < 128 else 32}
        return {"seq": family.seq}
    if family.kind == "vision":
        return {"image": config.get("image_size", 224)}
    return {"mels": config["num_mel_bins"], "frames": 2 * config["max_source_positions"]}


def spec_of(name: str, tiny: bool) -> dict:
    family = FAMILIES[name]
    config = dict(family.tiny if tiny else family.base)
    return {"family": name, "size": "tiny" if tiny else "base", "config_class": family.config_class,
            "model_class": family.model_class, "config": config, "exporter": family.exporter,
            "input": input_shape(family, config, tiny)}


def export_dir(work: Path, name: str, tiny: bool) -> Path:
    import torch
    import transformers

    spec = spec_of(name, tiny)
    key = json.dumps({**spec, "torch": torch.__version__, "transformers": transformers.__version__}, sort_keys=True)
    return work / f"{name}-{spec['size']}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def example_inputs(kind: str, shape: dict, batch: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "text":
        seq = shape["seq"]
        return {"input_ids": rng.integers(3, min(vocab, 20000), (batch, seq)).astype(np.int64),
                "attention_mask": np.ones((batch, seq), np.int64)}
    if kind == "vision":
        side = shape["image"]
        return {"pixel_values": rng.standard_normal((batch, 3, side, side)).astype(np.float32)}
    return {"input_features": rng.standard_normal((batch, shape["mels"], shape["frames"])).astype(np.float32)}


def _model_class(path: str):
    import importlib

    import transformers

    if ":" in path:
        module, attribute = path.split(":")
        return getattr(importlib.import_module(module), attribute)
    return getattr(transformers, path)


def export_one(name: str, work: Path, tiny: bool) -> None:
    """Build, perturb, count FLOPs and export one family into its cache folder (meta.json written last)."""
    import torch
    import transformers
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from tfopt.torch_kit import quiet_export

    family, spec = FAMILIES[name], spec_of(name, tiny)
    folder = export_dir(work, name, tiny)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    config = getattr(transformers, family.config_class)(**spec["config"])
    inner = _model_class(family.model_class)(config)
    with torch.no_grad():  # default inits leave biases, norms and bias tables constant: make every weight real
        for parameter in inner.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    inner.eval()
    names = INPUT_NAMES[family.kind]

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = inner

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = inner

        def forward(self, features):
            return self.model(features)[0]

    model = (Text() if family.kind == "text" else Features()).eval()
    vocab = getattr(config, "vocab_size", 1000)
    bench = [torch.from_numpy(v) for v in example_inputs(family.kind, spec["input"], 1, vocab).values()]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:  # the math path: attention's products count as bmm
        model(*bench)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    conv = sum(n for op, n in by_op.items() if "convolution" in op)

    trace_shape = dict(spec["input"], seq=min(spec["input"].get("seq", 16), 16))
    trace = tuple(torch.from_numpy(v) for v in example_inputs(family.kind, trace_shape, 2, vocab).values())
    path = folder / "raw.onnx"
    start = time.perf_counter()
    with quiet_export(), torch.no_grad():
        if family.exporter == "dynamo":
            dynamic = torch.export.Dim.DYNAMIC
            shapes = ({0: dynamic, 1: dynamic},) * 2 if family.kind == "text" else ({0: dynamic},)
            torch.onnx.export(model, trace, str(path), dynamo=True, dynamic_shapes=shapes, input_names=names,
                              output_names=["out"])
        else:
            axes = {n: {0: "batch", 1: "sequence"} if family.kind == "text" else {0: "batch"} for n in names}
            torch.onnx.export(model, trace, str(path), dynamo=False, opset_version=17, dynamic_axes=axes,
                              input_names=names, output_names=["out"])
    seconds = time.perf_counter() - start
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "encoder_attention_heads", None) \
        or getattr(config, "num_heads", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", 0)
    if isinstance(heads, (list, tuple)):  # Swin: heads differ per stage; both optimizers detect them
        heads, hidden = 0, 0
    meta = {**spec, "vocab": vocab, "heads": int(heads), "hidden": int(hidden), "export_s": seconds,
            "flops": sum(by_op.values()), "conv_flops": conv, "flops_by_op": by_op,
            "parameters": sum(p.numel() for p in inner.parameters())}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def cached_export(name: str, work: Path, tiny: bool) -> tuple[Path, dict] | str:
    """(raw model, meta) from the cache or a fresh export in a subprocess; a string says why it failed."""
    folder = export_dir(work, name, tiny)
    if (folder / "meta.json").exists():
        print(f"  export: cached in {folder}", flush=True)
    else:
        print(f"  export: {FAMILIES[name].exporter} exporter ...", flush=True)
        command = [sys.executable, __file__, "--export-one", name, "--work", str(work)] + (["--tiny"] if tiny else [])
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0 or not (folder / "meta.json").exists():
            return f"export failed: {last_line(proc.stderr or proc.stdout)}"
    meta = json.loads((folder / "meta.json").read_text())
    print(f"  export: {meta['export_s']:.1f} s when made; {meta['flops'] / 1e9:.3g} GFLOP per call", flush=True)
    return folder / "raw.onnx", meta


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:200].replace("|", "/")


# ----------------------------------------------------------------------------- optimizers (own subprocess each)

_OPTIMIZERS = {
    "ort-transformers": """
        model = optimize_model(SRC, model_type=ORT_TYPE, num_heads=HEADS, hidden_size=HIDDEN)
        optimized = time.perf_counter()
        model.save_model_to_file(DST, use_external_data_format=True)
        extra = {}
    """,
    "tfopt": """
        model = tfopt.optimize_model(SRC, model_type=TFOPT_TYPE, cpu_layer_norm=CPU_LAYER_NORM)
        optimized = time.perf_counter()
        model.save_model_to_file(DST)  # validates against the input before writing
        extra = {"leftover": dict(model.stats.leftover), "missing": list(model.missing_fusions),
                 "dropped": [str(rule) for rule in model.dropped_rules]}
    """,
}
_IMPORTS = {
    "ort-transformers": "from onnxruntime.transformers.optimizer import optimize_model",
    "tfopt": "import tfopt, tfopt.optimizer, tfopt.graph, onnxruntime",
}
_HARNESS = """
import os, sys, time, json, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
SRC, DST = os.environ["SRC"], os.environ["DST"]
ORT_TYPE, TFOPT_TYPE = os.environ["ORT_TYPE"], os.environ["TFOPT_TYPE"]
HEADS, HIDDEN = int(os.environ["HEADS"]), int(os.environ["HIDDEN"])
CPU_LAYER_NORM = os.environ.get("CPU_LAYER_NORM") == "1"
{imports}  # imports are not the optimizer's cost
def high_water_mark():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
def resident():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as refs:  # reset the peak so imports do not count
    refs.write("5")
baseline = resident()
start = time.perf_counter()
{body}
done = time.perf_counter()
print("RESULT" + json.dumps({{"optimize_s": optimized - start, "save_s": done - optimized,
                              "peak_mb": (high_water_mark() - baseline) / 1e6, **extra}}))
"""


def run_optimizer(name: str, src: Path, dst: Path, family: Family, meta: dict) -> dict:
    """``name``: an optimizer of _OPTIMIZERS, or "tfopt-cpu-ln" (tfopt with ``cpu_layer_norm``)."""
    optimizer = name.removesuffix("-cpu-ln")
    code = _HARNESS.format(imports=_IMPORTS[optimizer], body=textwrap.dedent(_OPTIMIZERS[optimizer]))
    env = dict(os.environ, SRC=str(src), DST=str(dst), ORT_TYPE=family.ort_type, TFOPT_TYPE=family.tfopt_type,
               HEADS=str(meta["heads"]), HIDDEN=str(meta["hidden"]), CPU_LAYER_NORM=str(int(name != optimizer)))
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 1800 s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    return {"error": last_line(proc.stderr or proc.stdout)}


# ----------------------------------------------------------------------------- graphs


def fused_ops(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.domain == "com.microsoft" or (node.domain in ("", "ai.onnx") and node.op_type in STANDARD_FUSED):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def leftover_of(path: Path) -> dict[str, int]:
    """tfopt's leftover counter (Softmax, norm chains, gelu formulas, rotate-half) on any model."""
    import onnx_ir as ir

    from tfopt.graph.leftovers import leftover_primitives

    return leftover_primitives(ir.load(str(path)))


def time_split(path: Path, feeds: dict[str, np.ndarray]) -> tuple[float, str]:
    """(GEMM share of kernel time, the three costliest other op types) from ONNX Runtime's profiler."""
    from tfopt.profile import profile_model

    profile = profile_model(path, feeds, samples=PROFILE_SAMPLES, warmup=3)
    gemm = sum(op.ms for op in profile.op_types if op.op_type in GEMM_OPS)
    others = [op for op in profile.op_types if op.op_type not in GEMM_OPS][:3]
    return gemm / profile.kernel_ms, ", ".join(f"{op.op_type} {op.share:.0%}" for op in others)


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in sorted(counts.items())) or "none"


def remove_model(path: Path) -> None:
    for file in path.parent.glob(path.name + "*"):
        file.unlink()


# ----------------------------------------------------------------------------- one family


@dataclass
class FamilyResult:
    name: str
    title: str
    shape: str = ""
    exporter: str = ""
    flops: float = 0.0
    error: str = ""  # the export failed: nothing else ran
    build: dict = field(default_factory=dict)  # optimizer -> harness result (or error)
    fused: dict = field(default_factory=dict)  # "raw export"/optimizer -> fused-op counts
    leftover: dict = field(default_factory=dict)  # "raw export"/optimizer -> leftover primitives
    parity: dict = field(default_factory=dict)  # engine -> max abs diff vs raw (or an error string)
    vs_raw: dict = field(default_factory=dict)  # engine -> RatioSummary vs ort:raw
    vs_ort: dict = field(default_factory=dict)  # engine -> RatioSummary vs ort:ort-transformers
    session_errors: dict = field(default_factory=dict)
    time_split: dict = field(default_factory=dict)  # engine -> (GEMM share of kernel time, top other op types)


def shape_text(kind: str, shape: dict) -> str:
    if kind == "text":
        return f"s={shape['seq']}"
    if kind == "vision":
        return f"{shape['image']}x{shape['image']}"
    return f"{shape['mels']}x{shape['frames']} mel"


def run_family(name: str, work: Path, args) -> FamilyResult:
    from tfopt.bench import ort_session

    family = FAMILIES[name]
    result = FamilyResult(name, family.title + (" (tiny)" if args.tiny else ""), exporter=family.exporter)
    exported = cached_export(name, work, args.tiny)
    if isinstance(exported, str):
        result.error = exported
        return result
    raw, meta = exported
    result.shape, result.flops = shape_text(family.kind, meta["input"]), float(meta["flops"])
    result.fused["raw export"], result.leftover["raw export"] = fused_ops(raw), leftover_of(raw)
    paths = {"ort:raw": raw, "ort:raw (A/A)": raw}
    for optimizer in OPTIMIZERS:
        print(f"  optimizing with {optimizer} ...", flush=True)
        dst = raw.parent / f"{optimizer}.onnx"
        remove_model(dst)
        result.build[optimizer] = run_optimizer(optimizer, raw, dst, family, meta)
        if "error" in result.build[optimizer]:
            print(f"    failed: {result.build[optimizer]['error']}", flush=True)
            continue
        result.fused[optimizer] = fused_ops(dst)
        build = result.build[optimizer]
        result.leftover[optimizer] = build["leftover"] if "leftover" in build else leftover_of(dst)
        paths[f"ort:{optimizer}"] = dst

    sessions = {}
    for label, path in paths.items():
        try:
            sessions[label] = ort_session(path)
        except Exception as exc:  # reported in the table, the other engines still run
            result.session_errors[label] = last_line(str(exc))
    feeds = example_inputs(family.kind, meta["input"], 1, meta["vocab"], seed=1)
    reference = None
    for label, session in list(sessions.items()):
        try:
            output = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
        except Exception as exc:
            result.session_errors[label] = f"run failed: {last_line(str(exc))}"
            del sessions[label]
            continue
        if label == "ort:raw":
            reference = output
        elif reference is not None:
            result.parity[label] = float(np.max(np.abs(output.astype(np.float64) - reference)))
    if "ort:raw" in sessions:
        print(f"  timing {', '.join(sessions)} ({args.rounds} rounds x {args.per_round}, interleaved) ...", flush=True)
        calls = {}
        for label, session in sessions.items():
            session_feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
            calls[label] = lambda session=session, session_feeds=session_feeds: session.run(None, session_feeds)
        medians = limits.rounds(calls, rounds=args.rounds, per_round=args.per_round)
        result.vs_raw = limits.ratios(medians, "ort:raw")
        if "ort:ort-transformers" in medians:
            result.vs_ort = limits.ratios(medians, "ort:ort-transformers")
    sessions.clear()
    gc.collect()
    for label in ("ort:raw", "ort:tfopt", "ort:tfopt-cpu-ln"):
        if label in paths and label not in result.session_errors:
            result.time_split[label] = time_split(paths[label], feeds)
    for optimizer in OPTIMIZERS:
        remove_model(raw.parent / f"{optimizer}.onnx")
    return result


# ----------------------------------------------------------------------------- report


def ratio_text(row) -> str:
    return f"{row.ratio:.3f}x [{row.low:.3f}, {row.high:.3f}]" if row is not None else "—"


def report(results: list[FamilyResult], machine, args, started: str) -> str:
    import onnxruntime as ort
    import torch
    import transformers

    size = "tiny configs (--tiny: 2 layers, hidden 64; smoke run, not a measurement)" if args.tiny else "base sizes"
    lines = [
        f"# Encoder benchmark ({started}, {size}, random weights, b=1, CPU x{os.cpu_count()}, onnxruntime "
        f"{ort.__version__}, torch {torch.__version__}, transformers {transformers.__version__})",
        "",
        machine.line(),
        "",
        f"{args.rounds} rounds x {args.per_round} calls per engine, the engines of a family interleaved in each round; "
        "p50 = median over rounds of each round's median; a ratio is the median over rounds of the within-round ratio "
        "[lowest, highest]; `ort:raw (A/A)` is a second session of the raw export: its spread is the noise. "
        "GFLOP/s = the model's matmul + conv FLOPs on the input / p50; max |diff| is against ORT on the raw export, "
        "same input.",
        "",
        "## tfopt per family",
        "",
        "| family | input | export | GFLOP | tfopt ms | tfopt / raw [spread] | tfopt / ORT optimizer [spread] | "
        "A/A [spread] | tfopt GFLOP/s | of sgemm | with cpu_layer_norm: / raw [spread] | / ORT optimizer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.title} | | {r.exporter} | | {r.error} | | | | | | | |")
            continue
        tfopt = r.vs_raw.get("ort:tfopt")
        split_ln = r.vs_raw.get("ort:tfopt-cpu-ln")
        split_ln_ort = r.vs_ort.get("ort:tfopt-cpu-ln") if r.vs_ort else None
        rate = r.flops / (tfopt.median_ms / 1e3) / 1e9 if tfopt else None
        vs_ort = r.vs_ort.get("ort:tfopt") if r.vs_ort else None
        missing = "ORT optimizer failed" if "error" in r.build.get("ort-transformers", {}) else "—"
        lines.append(
            f"| {r.title} | {r.shape} | {r.exporter} | {r.flops / 1e9:.3g} | "
            f"{f'{tfopt.median_ms:.2f}' if tfopt else 'failed'} | {ratio_text(tfopt)} | "
            f"{ratio_text(vs_ort) if vs_ort else missing} | {ratio_text(r.vs_raw.get('ort:raw (A/A)'))} | "
            f"{f'{rate:.0f}' if rate else '—'} | {f'{rate / machine.sgemm_gflops:.0%}' if rate else '—'} | "
            f"{ratio_text(split_ln)} | {f'{split_ln_ort.ratio:.3f}x' if split_ln_ort else '—'} |"
        )
    lines += [
        "",
        "## Every engine",
        "",
        "| family | engine | p50 ms | vs ORT raw [spread] | vs ORT optimizer [spread] | GFLOP/s | of sgemm | max abs diff vs raw |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.title} | — | {r.error} | | | | | |")
            continue
        for engine in ENGINES:
            row = r.vs_raw.get(engine)
            if row is None:
                why = r.session_errors.get(engine) or r.build.get(engine.removeprefix("ort:"), {}).get("error", "not run")
                lines.append(f"| {r.title} | {engine} | failed: {why} | | | | | |")
                continue
            rate = r.flops / (row.median_ms / 1e3) / 1e9
            parity = r.parity.get(engine)
            parity_text = "reference" if engine == "ort:raw" else (f"{parity:.1e}" if parity is not None else "—")
            vs_ort = r.vs_ort.get(engine) if r.vs_ort else None
            lines.append(
                f"| {r.title} | {engine} | {row.median_ms:.2f} | {ratio_text(row)} | {ratio_text(vs_ort)} | {rate:.0f} | "
                f"{rate / machine.sgemm_gflops:.0%} | {parity_text} |"
            )
    lines += [
        "",
        "## Where the time goes",
        "",
        f"ONNX Runtime's profiler, {PROFILE_SAMPLES} runs after 3 warm-up runs (the quieter half averaged), same input. "
        "GEMM share = MatMul, Gemm, Conv and their fused forms, of the kernel time. The raw export's GEMM share is the "
        "lowest tfopt / raw any graph rewrite reaches while the GEMMs run as they did: it would have to remove all other "
        "ops' time.",
        "",
        "| family | raw: GEMM share (floor of tfopt / raw) | raw: costliest other ops | tfopt: GEMM share | "
        "tfopt: costliest other ops | with cpu_layer_norm: GEMM share | costliest other ops |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error or not r.time_split:
            continue
        splits = [r.time_split.get(label) for label in ("ort:raw", "ort:tfopt", "ort:tfopt-cpu-ln")]
        cells = [f"{split[0]:.0%} | {split[1]}" if split else "— | —" for split in splits]
        lines.append(f"| {r.title} | {' | '.join(cells)} |")
    lines += [
        "",
        "## Optimizers",
        "",
        "Each optimizer ran in a fresh subprocess: optimize s = `optimize_model`, save s = `save_model_to_file` "
        "(tfopt's validates the model against the input before writing), peak MB = its resident peak beyond the "
        "process after imports. Fused ops: com.microsoft ops and ONNX's Attention, LayerNormalization, "
        "RMSNormalization, Gelu, RotaryEmbedding. Left unfused: Softmax, norm chains, gelu formulas and rotate-half "
        "still in the graph (tfopt's `stats.leftover`; the same counter on the raw export and ORT's output).",
        "",
        "| family | model | optimize s | save s | peak MB | fused ops | left unfused |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.title} | raw export | {r.error} | | | | |")
            continue
        lines.append(f"| {r.title} | raw export ({r.exporter}) | | | | {format_counts(r.fused['raw export'])} | "
                     f"{format_counts(r.leftover['raw export'])} |")
        for optimizer in OPTIMIZERS:
            build = r.build.get(optimizer, {"error": "not run"})
            if "error" in build:
                lines.append(f"| {r.title} | {optimizer} | failed: {build['error']} | | | | |")
                continue
            extra = ""
            if build.get("missing"):
                extra += f"; missing: {'; '.join(build['missing'])}"
            if build.get("dropped"):
                extra += f"; dropped rules: {', '.join(build['dropped'])}"
            lines.append(
                f"| {r.title} | {optimizer} | {build['optimize_s']:.2f} | {build['save_s']:.2f} | {build['peak_mb']:.0f} | "
                f"{format_counts(r.fused[optimizer])} | {format_counts(r.leftover[optimizer])}{extra.replace('|', '/')} |"
            )
    notes = [f"- {r.title}: {FAMILIES[r.name].note}" for r in results if FAMILIES[r.name].note]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated, from: {', '.join(FAMILIES)} (default: all)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--work", type=Path, help="keep exports here and reuse them (outside the repository)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 64, small images and audio: a smoke run")
    parser.add_argument("--export-one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.export_one:
        export_one(args.export_one, args.work, args.tiny)
        return
    names = [name.strip() for name in args.families.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    if args.rounds < 1 or args.per_round < 1:
        parser.error("--rounds and --per-round must be at least 1")
    work = (args.work or Path(tempfile.mkdtemp(prefix="tfopt-bench-encoders-"))).resolve()
    if work == REPO or REPO in work.parents:
        parser.error(f"--work {work} is inside the repository; exports go outside it")
    work.mkdir(parents=True, exist_ok=True)

    started = time.strftime("%Y-%m-%d %H:%M")
    clock = time.perf_counter()
    print("measuring the machine's sgemm rate and DRAM bandwidth ...", flush=True)
    machine = limits.measure()
    results = []
    try:
        for name in names:
            print(f"{FAMILIES[name].title} ({name}):", flush=True)
            family_start = time.perf_counter()
            results.append(run_family(name, work, args))
            print(f"  done in {time.perf_counter() - family_start:.0f} s", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    text = report(results, machine, args, started)
    text += f"\n\nWhole run: {time.perf_counter() - clock:.0f} s."
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
