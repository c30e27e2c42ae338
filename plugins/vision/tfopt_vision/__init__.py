"""tfopt adapter for Hugging Face vision encoders from PyTorch.

Families: ViT, DeiT, DINOv2, Swin, the CLIP vision tower (CLIPVisionModel) and the SigLIP vision
tower (SiglipVisionModel). Registered with the tfopt host under the entry point ``vision``; the
hooks live in :mod:`tfopt_vision.hooks`. Sources: ``tiny-vit`` (the default), ``tiny-deit``,
``tiny-dinov2``, ``tiny-swin``, ``tiny-clip-vision``, ``tiny-siglip-vision`` (fixed-seed random
weights), a Hugging Face model directory (config.json + weights), or a hub id (online only).
Options read from ``ctx.options``: exporter, opset, attn_implementation, batch_sizes, precision,
tolerance, bench_batch_sizes, bench_repeat, bench_warmup. Fusion is the host's default (shared
rules, counts from ``tfopt.graph.MODEL_TYPES``). torch is imported inside the hooks.
"""

from .hooks import benchmark_hook, export_hook, make_dummy_inputs_hook, verify_hook

__all__ = ["benchmark_hook", "export_hook", "make_dummy_inputs_hook", "verify_hook"]
