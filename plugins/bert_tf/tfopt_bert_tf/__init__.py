"""tfopt adapter ``bert_tf``: TensorFlow BERT converted with tf2onnx.

Sources: a SavedModel directory (its ``serving_default`` signature, or ``signature=``),
a Hugging Face TF directory (config.json + tf_model.h5, e.g. from
``save_pretrained(saved_model=True)``, whose ``saved_model/<n>`` is found too), the
built-in ``tiny-bert-tf`` (the default) or ``random-bert-base-tf`` (bert-base shape, for
benchmarks), or a model object (:func:`export_model`).

Options read from ``ctx.options``: opset, signature, batch_sizes, sequence_lengths,
precision, tolerance, bench_batch_sizes, bench_sequence_lengths, bench_repeat,
bench_warmup, bench_threads. The Keras adapter (``tfopt_bert_keras``) shares the
conversion, verify and benchmark code in this package's submodules.
"""

from tfopt import PluginOption

from .hooks import benchmark_hook, export_hook, export_model, make_dummy_inputs_hook, verify_hook

BENCH_THREADS = PluginOption("bench_threads", int, 0, "Threads of TensorFlow and ONNX Runtime while timing (0: each one's default).")
# Flags of `tfopt run --plugin bert_tf` (each also --option KEY=VALUE).
tfopt_options = (
    PluginOption("signature", str, "serving_default", "The SavedModel signature to export and compare with.", metavar="NAME"),
    BENCH_THREADS,
)

__all__ = ["tfopt_options", "benchmark_hook", "export_hook", "export_model", "make_dummy_inputs_hook", "verify_hook"]
