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
max_sequence_length, input_int32, precision (fp32, fp16, int8, int4), lm_head_precision (quantized,
int8, fp32), int8_method (weight_only, dynamic), int4_block_size, weight_rounding (gptq,
nearest; gptq is the default for the trained text models), tolerance, verify_cases, threads,
bench_batch_sizes, bench_past_lengths, bench_prompt_lengths, bench_repeat, bench_warmup,
bench_generate_tokens, bench_generate_batch_size, bench_generate_prompt_length.
"""

from .hooks import benchmark_hook, convert_precision_hook, export_hook, make_dummy_inputs_hook, verify_hook

__all__ = ["benchmark_hook", "convert_precision_hook", "export_hook", "make_dummy_inputs_hook", "verify_hook"]
