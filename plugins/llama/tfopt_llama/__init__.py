"""tfopt adapter for decoder LLMs with a key/value cache, from PyTorch: Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma, Gemma 2.

Registered under the entry point ``llama``. Sources: ``tiny-<family>`` (random weights,
:mod:`tfopt_llama.models`; ``tiny-llama`` is the default), ``stdlib-llama`` and
``stdlib-llama-tiny`` (byte-level Llamas trained here on the standard library's docstrings,
:mod:`tfopt_llama.textmodel`: what int8/int4 are judged on), or a local Hugging Face model
directory of one of those families. The exported graph is one decoding step
(:mod:`tfopt.causal_lm`); fusion uses the shared rules (RMSNorm, rotary embeddings,
attention over the cache), checked against the family's counts; verify compares logits
and presents with PyTorch on left-padded steps.

Options: attn_implementation (sdpa, eager), opset, seed, shapes and bench_shapes (``b,p,s;...``:
batch, past, new tokens), tolerance, bench_repeat, bench_warmup, and the decoder precision
options of :mod:`tfopt.decoder_precision` (lm_head_precision, int8_method, int4_block_size,
weight_rounding). Generation: :mod:`tfopt.generation` and ``tfopt generate``.
"""

from .hooks import benchmark_hook, convert_precision_hook, export_hook, make_dummy_inputs_hook, verify_hook

__all__ = ["benchmark_hook", "convert_precision_hook", "export_hook", "make_dummy_inputs_hook", "verify_hook"]
