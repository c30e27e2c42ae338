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

from tfopt import PluginOption
from tfopt.plugin_options import DECODER_PRECISION_OPTIONS

from .hooks import benchmark_hook, convert_precision_hook, export_hook, make_dummy_inputs_hook, verify_hook

# Flags of `tfopt run --plugin llama` (each also --option KEY=VALUE).
tfopt_options = (
    PluginOption("seed", int, 0, "Seed of the random-weight models and of the verification steps."),
    PluginOption("shapes", str, None, "Verification steps as batch,past,new_tokens triples, ';'-separated; "
                 "default: 7 steps (2 more on held-out text for the trained models).", metavar="B,P,S;..."),
    PluginOption("bench_shapes", str, "1,0,32;1,32,1;4,32,1", "Timed steps as batch,past,new_tokens triples.",
                 metavar="B,P,S;..."),
    *DECODER_PRECISION_OPTIONS,
)

__all__ = ["tfopt_options", "benchmark_hook", "convert_precision_hook", "export_hook", "make_dummy_inputs_hook", "verify_hook"]
