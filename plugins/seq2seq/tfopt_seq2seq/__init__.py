"""tfopt adapter for encoder-decoder generation from PyTorch: T5 (Flan-T5, mT5), BART, Marian, Whisper.

Registered under the entry point ``seq2seq``. Sources: ``tiny-t5`` (the default),
``tiny-flan-t5``, ``tiny-bart``, ``tiny-marian``, ``tiny-whisper`` (random weights,
:mod:`tfopt_seq2seq.models`), ``stdlib-t5`` and ``stdlib-t5-tiny`` (byte-level T5s trained
here to restore masked docstring text, :mod:`tfopt_seq2seq.textmodel`: what generation is
judged on), a local Hugging Face directory or a hub id of one of those families.

A run writes two graphs (:mod:`tfopt.encoder_decoder` states their names): ``encoder.onnx``
(source -> hidden states and every layer's cross-attention keys/values) and ``decoder.onnx``
(one step with past, the run's own model). Each stage treats both; the report's outputs name
the encoder of each stage (``encoder_exported``, ``encoder_optimized``, ``encoder_final``).
Generation: :class:`tfopt.encoder_decoder.EncoderDecoder` and ``tfopt generate RUN_DIR``.

Options: exporter (dynamo, legacy), attn_implementation, opset, seed, precision (fp32, fp16,
int8 and int4 for the decoder's weights), the decoder precision options of
:mod:`tfopt.decoder_precision` (lm_head_precision, int8_method, int4_block_size, weight_rounding),
tolerance, bench_repeat, bench_warmup, bench_shapes.
"""

from tfopt import PluginOption
from tfopt.plugin_options import DECODER_PRECISION_OPTIONS

from .hooks import benchmark_hook, convert_precision_hook, export_hook, fuse_hook, make_dummy_inputs_hook, verify_hook

tfopt_options = (
    PluginOption("seed", int, 0, "Seed of the verification inputs."),
    PluginOption("bench_shapes", str, "1,32,1;4,32,1", "Timed decoding steps as batch,past,new_tokens triples "
                 "(';'-separated); generation of 32 tokens is timed besides.", metavar="B,P,S;..."),
    *DECODER_PRECISION_OPTIONS,
)

__all__ = ["tfopt_options", "benchmark_hook", "convert_precision_hook", "export_hook", "fuse_hook", "make_dummy_inputs_hook",
           "verify_hook"]
