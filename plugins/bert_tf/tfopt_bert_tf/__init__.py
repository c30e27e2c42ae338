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

from .hooks import benchmark_hook, export_hook, export_model, make_dummy_inputs_hook, verify_hook

__all__ = ["benchmark_hook", "export_hook", "export_model", "make_dummy_inputs_hook", "verify_hook"]
