"""tfopt adapter for two-tower image-text models from PyTorch: CLIP (CLIPModel) and SigLIP (SiglipModel).

Both towers are exported into one graph: ``input_ids`` (+ ``attention_mask`` for CLIP; SigLIP's
convention is text padded to max_length with no mask) and ``pixel_values`` in;
``text_embeds``, ``image_embeds`` (projected and L2-normalized, as the Hugging Face model returns
them) and ``logits_per_image`` out. Registered under the entry point ``clip``; the hooks live in
:mod:`tfopt_clip.hooks`. Sources: ``tiny-clip`` (the default), ``tiny-siglip`` (fixed-seed random
weights), a Hugging Face directory (config.model_type clip or siglip) or a hub id (online only).
Fusion is the host's default with counts this adapter states from the config. torch is imported
inside the hooks.
"""

from tfopt import PluginOption

from .hooks import benchmark_hook, export_hook, make_dummy_inputs_hook, verify_hook

tfopt_options = (
    PluginOption(
        "min_cosine", float, None,
        "Least cosine similarity between ORT's and torch's embedding rows (default: 0.9999 at fp32, 0.999 fp16, 0.99 int8/int4).",
    ),
)

__all__ = ["tfopt_options", "benchmark_hook", "export_hook", "make_dummy_inputs_hook", "verify_hook"]
