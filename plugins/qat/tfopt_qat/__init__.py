"""tfopt adapter ``qat``: fine-tune a BERT-family classifier, train it with fake int8
quantization, and ship it as an int8 ONNX model that keeps its accuracy.

``tfopt run --plugin qat --precision int8 --output out/`` trains on the default real data
(Rotten Tomatoes review snippets) from the real all-MiniLM-L6-v2, exports Q/DQ ONNX, fuses it
for ONNX Runtime with the trained scales, and verifies task accuracy against fp32 and PTQ.
Options: :data:`tfopt_options` below, flags of ``tfopt run --plugin qat`` (``--data FILE``,
``--epochs 1``; ``--option data=FILE`` too). See docs/qat.md.
"""

from tfopt import PluginOption

from .hooks import (
    benchmark_hook, convert_precision_hook, export_hook, fuse_hook, make_dummy_inputs_hook, verify_hook,
)

# The training options are TrainConfig's fields, with its defaults (tests/test_qat_options.py keeps them equal).
tfopt_options = (
    PluginOption("data", str, None, "Labelled text: CSV, TSV or JSONL (.bz2 too); default: Rotten Tomatoes snippets.",
                 metavar="FILE"),
    PluginOption("text_column", str, "text", "Column holding the text.", metavar="NAME"),
    PluginOption("label_column", str, "label", "Column holding the label (any strings or integers).", metavar="NAME"),
    PluginOption("max_examples", int, 2000, "Examples sampled from the data, class-balanced (0 = all)."),
    PluginOption("eval_fraction", float, 0.25, "Share of the examples held out for accuracy."),
    PluginOption("seed", int, 0, "Seed of the split, the sample and training."),
    PluginOption("max_length", int, 64, "Tokens per example (>= 8)."),
    PluginOption("batch_size", int, 32, "Global training batch, whatever the number of processes."),
    PluginOption("epochs", int, 2, "fp32 fine-tuning epochs (0: none)."),
    PluginOption("qat_epochs", int, 1, "Quantization-aware training epochs (>= 1)."),
    PluginOption("lr", float, 5e-5, "fp32 fine-tuning learning rate."),
    PluginOption("qat_lr", float, 1e-5, "QAT learning rate."),
    PluginOption("observer_fraction", float, 0.5, "Share of QAT steps whose activation ranges follow the data."),
    PluginOption("distill", float, 0.5, "QAT: weight of the fp32 model's soft labels in the loss."),
    PluginOption("checkpoint_every", int, 100, "Training steps between resumable checkpoints."),
    PluginOption("accuracy_tolerance", float, 1.0, "Points of held-out accuracy int8 may lose against fp32."),
)

__all__ = ["tfopt_options", "benchmark_hook", "convert_precision_hook", "export_hook", "fuse_hook", "make_dummy_inputs_hook", "verify_hook"]
