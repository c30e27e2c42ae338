"""tfopt adapter ``qat``: fine-tune a BERT-family classifier, train it with fake int8
quantization, and ship it as an int8 ONNX model that keeps its accuracy.

``tfopt run --plugin qat --precision int8 --output out/`` trains on the default real data
(Rotten Tomatoes review snippets) from the real all-MiniLM-L6-v2, exports Q/DQ ONNX, fuses it
for ONNX Runtime with the trained scales, and verifies task accuracy against fp32 and PTQ.
Options (``--option key=value``): data, text_column, label_column, max_examples, eval_fraction,
seed, max_length, batch_size, epochs, qat_epochs, lr, qat_lr, observer_fraction,
checkpoint_every, accuracy_tolerance. See docs/qat.md.
"""

from .hooks import (
    benchmark_hook, convert_precision_hook, export_hook, fuse_hook, make_dummy_inputs_hook, verify_hook,
)

__all__ = ["benchmark_hook", "convert_precision_hook", "export_hook", "fuse_hook", "make_dummy_inputs_hook", "verify_hook"]
