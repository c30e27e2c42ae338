"""tfopt adapter ``bert_keras``: Keras BERT models — keras-hub ``BertBackbone`` (Keras 3) and
Hugging Face TF BERT (tf_keras).

Sources: a ``.keras``/``.h5`` file, a Hugging Face TF directory (config.json +
tf_model.h5), the built-ins ``tiny-keras-hub-bert`` (the default), ``tiny-hf-keras-bert``
and ``random-keras-hub-bert-base`` (bert-base shape, for benchmarks), or a model object
(:func:`export_model`). Conversion routes, and why keras2onnx is not one of them:
:mod:`tfopt_bert_keras.export`.

Options read from ``ctx.options``: route (``tf2onnx``, the default, or ``keras``), opset,
and bert_tf's: batch_sizes, sequence_lengths, precision, tolerance, bench_batch_sizes,
bench_sequence_lengths, bench_repeat, bench_warmup, bench_threads.
"""

from tfopt import PluginOption
from tfopt_bert_tf import BENCH_THREADS

from .hooks import benchmark_hook, export_hook, export_model, make_dummy_inputs_hook, verify_hook

# Flags of `tfopt run --plugin bert_keras` (each also --option KEY=VALUE).
tfopt_options = (
    PluginOption("route", str, "tf2onnx", "Conversion route: tf2onnx, or Keras 3's own ONNX export.", choices=("tf2onnx", "keras")),
    BENCH_THREADS,
)

__all__ = ["tfopt_options", "benchmark_hook", "export_hook", "export_model", "make_dummy_inputs_hook", "verify_hook"]
