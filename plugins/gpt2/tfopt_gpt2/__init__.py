"""tfopt adapter for GPT-2 with past key/values, from PyTorch: GPT2LMHeadModel, GPT2Model, DistilGPT2.

Registered with the tfopt host under the entry point ``gpt2``; the hooks live in
:mod:`tfopt_gpt2.hooks`. Sources: ``tiny-gpt2`` (the default), ``tiny-gpt2-base``
(GPT2Model), ``tiny-distilgpt2`` and ``gpt2-small-random`` (GPT-2 small's shape), all with
random weights -- no real GPT-2 weights can be had offline --, ``stdlib-gpt2`` (a small
byte-level GPT-2 trained here on the standard library's docstrings, :mod:`tfopt_gpt2.textmodel`), a Hugging Face model
directory, or a hub id (online only).

The exported graph is one decoding step: ``input_ids``, ``attention_mask`` (past + new),
``position_ids`` and ``past_key_values.{i}.key/value`` in; ``logits`` (or
``last_hidden_state``) and ``present.{i}.key/value`` out. Greedy generation over it:
:func:`tfopt_gpt2.generate.greedy_generate_onnx`.

Options read from ``ctx.options``: exporter, opset, attn_implementation, lm_head, cases,
seed, batch_sizes, past_lengths, sequence_lengths, max_batch_size, max_past_length,
max_sequence_length, input_int32, precision (fp32, fp16, bf16, int8, int4), lm_head_precision (quantized,
int8, fp32), int8_method (weight_only, dynamic), int4_block_size, weight_rounding (gptq,
nearest; gptq is the default for the trained text models), tolerance, verify_cases, threads,
bench_batch_sizes, bench_past_lengths, bench_prompt_lengths, bench_repeat, bench_warmup,
bench_generate_tokens, bench_generate_batch_size, bench_generate_prompt_length.
"""

from tfopt import PluginOption
from tfopt.plugin_options import DECODER_PRECISION_OPTIONS

from .hooks import benchmark_hook, convert_precision_hook, export_hook, make_dummy_inputs_hook, verify_hook

# Flags of `tfopt run --plugin gpt2` (each also --option KEY=VALUE); the host's own options are not repeated here.
tfopt_options = (
    PluginOption("lm_head", bool, None, "GPT2LMHeadModel (--lm-head) or GPT2Model (--no-lm-head) from a directory or "
                 "hub id; default: as the checkpoint says."),
    PluginOption("cases", int, 32, "Random decoding steps to verify on, unless a grid is given "
                 "(--batch-sizes, --sequence-lengths, --past-lengths)."),
    PluginOption("past_lengths", list[int], (0, 8), "Past lengths of the verification grid (0: the first step)."),
    PluginOption("max_batch_size", int, 8, "Largest batch of a random step."),
    PluginOption("max_past_length", int, 16, "Largest past of a random step."),
    PluginOption("max_sequence_length", int, 16, "Most new tokens of a random step."),
    PluginOption("seed", int, 0, "Seed of the random steps and their ids."),
    PluginOption("verify_cases", int, 100, "Steps verify compares: the inputs topped up with random ones (0: the inputs only)."),
    PluginOption("threads", int, 0, "Threads of every benchmarked engine, torch included (0: each one's default)."),
    PluginOption("bench_past_lengths", list[int], (4, 8, 32, 128),
                 "Past lengths of the timed decode steps (the defaults are clipped to the model's positions)."),
    PluginOption("bench_prompt_lengths", list[int], (32,),
                 "Prompt lengths timed (0: no prompt rows); default bench_sequence_lengths, else 32."),
    PluginOption("bench_generate_tokens", int, 16, "Tokens of the timed greedy generation (0: none)."),
    PluginOption("bench_generate_batch_size", int, 2, "Prompts of the timed generation."),
    PluginOption("bench_generate_prompt_length", int, 8, "Prompt length of the timed generation."),
    *DECODER_PRECISION_OPTIONS,
)

__all__ = ["tfopt_options", "benchmark_hook", "convert_precision_hook", "export_hook", "make_dummy_inputs_hook", "verify_hook"]
