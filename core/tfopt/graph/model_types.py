"""The model types ``--model_type`` accepts, and the fused-op counts a fully fused model of each has.

A model type is data: a layout's counts for ``L`` layers (``L`` = the Softmax count of the
export, or ``ModelInfo.num_layers``). The rules are the same for every type; the type only says
what to expect, so a fusion that did not happen is reported instead of passing silently. Where a
layout varies within a type (Swin's stages, CLIP's two towers) the counts are the lower bound every
member meets; primitives left unfused are counted from the graph anyway (:mod:`.leftovers`).

ONNX Runtime's own names (``bert``, ``vit``, ``swin``, ``clip``, ``t5``, ``bart``, ``gpt2``, ...)
are accepted where tfopt's rules were measured on such exports; the rest are refused in one line
naming the nearest type (:data:`NOT_COVERED`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

GELU_OPS = ("BiasGelu", "FastGelu", "Gelu", "QuickGelu")
GELU_KEY = "|".join(GELU_OPS)
ATTENTION_KEY = "Attention|MultiHeadAttention"


def encoder_counts(
    num_layers: int, *, embed_layer_norm: bool = True, extra_skip_layer_norms: int = 0, extra_gelus: int = 0
) -> dict[str, int]:
    """A fully fused post-LN encoder (BERT's layout) with ``num_layers`` layers.

    ``embed_layer_norm=False`` for encoders whose input is not looked up in a token table
    (image patches, audio frames): there is no EmbedLayerNormalization to expect. A pre-LN
    encoder (ViT) has the same counts: its 2L LayerNorms after residual Adds become
    SkipLayerNormalization, the first layer's LayerNorm of the embeddings stays one.
    ``extra_skip_layer_norms``: LayerNorms after an Add outside the layers (a final LayerNorm
    after the last residual, as Wav2Vec2's pre-LN layout has: 1). ``extra_gelus``: Gelus
    outside the feed-forwards (a conv front end's, a positional conv's).
    """
    counts = {"EmbedLayerNormalization": 1} if embed_layer_norm else {}
    counts.update({
        ATTENTION_KEY: num_layers,
        "SkipLayerNormalization": 2 * num_layers + extra_skip_layer_norms,
        GELU_KEY: num_layers + extra_gelus,
    })
    return counts


def decoder_counts(num_layers: int) -> dict[str, int]:
    """A fully fused pre-LN decoder (GPT-2's layout) with ``num_layers`` layers.

    Layer 0's ln_1 normalizes the word + position lookups: EmbedLayerNormalization (which
    also emits the sum, the residual into layer 0); the other 2L LayerNorms follow a
    residual Add (ln_f included) and become SkipLayerNormalization.
    """
    return {
        "EmbedLayerNormalization": 1, ATTENTION_KEY: num_layers, "SkipLayerNormalization": 2 * num_layers, GELU_KEY: num_layers,
    }


def llm_counts(num_layers: int, *, qk_norms: bool = False, sandwich_norms: bool = False) -> dict[str, int]:
    """A fully fused Llama-layout decoder with ``num_layers`` layers.

    The first RMSNorm reads the embeddings (SimplifiedLayerNormalization); every other one
    follows a residual Add (SkipSimplifiedLayerNormalization, the final norm included): 2L.
    Each layer has one attention over its cache and two rotary embeddings (Q and K).
    ``qk_norms`` (Qwen3): an RMSNorm on Q and on K per layer, +2L SimplifiedLayerNormalization.
    ``sandwich_norms`` (Gemma 2): each sub-layer's output is normalized before the residual
    Add, +2L SimplifiedLayerNormalization.
    """
    plain_norms = 1 + (2 * num_layers if qk_norms else 0) + (2 * num_layers if sandwich_norms else 0)
    return {
        "SimplifiedLayerNormalization": plain_norms,
        "SkipSimplifiedLayerNormalization": 2 * num_layers,
        ATTENTION_KEY: num_layers,
        "RotaryEmbedding": 2 * num_layers,
    }


def _rotary_encoder_counts(num_layers: int) -> dict[str, int]:
    """ModernBERT: pre-LN with rotary Q/K and GeGLU; layer 0 has no attention norm (2L SkipLayerNorms
    with the final norm), the embeddings' norm stays a LayerNormalization."""
    return {
        ATTENTION_KEY: num_layers, "RotaryEmbedding": 2 * num_layers, "SkipLayerNormalization": 2 * num_layers,
        GELU_KEY: num_layers,
    }


# Encoder-decoder models: one type takes the encoder's export and the decoder's (with or without past).
# ``num_layers`` counts attentions (Softmax nodes): a decoder layer has two (self and cross) and three
# norms, an encoder layer one and two, so per attention each has at least one norm after a residual
# and a gelu per two attentions. Those are the bounds stated; primitives left are counted anyway.

def _t5_counts(attentions: int) -> dict[str, int]:
    """T5: RMSNorms (the first reads the embeddings), no gelu in T5 v1.0's ReLU feed-forward."""
    return {ATTENTION_KEY: attentions, "SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": attentions}


def _bart_counts(attentions: int) -> dict[str, int]:
    """BART: the token + position lookups' LayerNorm is EmbedLayerNormalization, post-LN layers."""
    return {"EmbedLayerNormalization": 1, ATTENTION_KEY: attentions, "SkipLayerNormalization": attentions, GELU_KEY: attentions // 2}


def _seq2seq_counts(attentions: int) -> dict[str, int]:
    """Marian (no embedding LayerNorm, a swish or gelu feed-forward) and Whisper (pre-LN; a conv front end
    in the encoder, a GatherND position lookup in the dynamo decoder): attention and a norm per attention."""
    return {ATTENTION_KEY: attentions, "SkipLayerNormalization": attentions}


def _lower_bound_counts(num_layers: int) -> dict[str, int]:
    """What every Swin stage layout and both CLIP towers have: an attention, a gelu and a norm after
    a residual per layer (the rest depends on the stage layout or the tower)."""
    return {ATTENTION_KEY: num_layers, "SkipLayerNormalization": num_layers, GELU_KEY: num_layers}


def _two_layer_norms_per_layer(num_layers: int) -> dict[str, int]:
    """Encoders with no token-table LayerNorm to fuse (patches, relative-position text encoders)."""
    return encoder_counts(num_layers, embed_layer_norm=False)


@dataclass(frozen=True)
class ModelType:
    """One accepted ``--model_type``: its counts for ``L`` layers and the exports they were measured on."""

    names: tuple[str, ...]  # the first is the type's own; the rest are aliases (ONNX Runtime's and Hugging Face's spellings)
    counts: Callable[[int], dict[str, int]]
    measured_on: str  # for --help and the docs: which exports these counts hold for


def _llm(qk_norms: bool = False, sandwich_norms: bool = False) -> Callable[[int], dict[str, int]]:
    return lambda layers: llm_counts(layers, qk_norms=qk_norms, sandwich_norms=sandwich_norms)


_TYPES = (
    ModelType(("bert", "roberta", "distilbert", "albert", "electra", "xlm-roberta", "bert_tf", "bert_keras", "mpnet"),
              encoder_counts, "BERT-layout text encoders (torch, tf2onnx, Keras), MPNet"),
    ModelType(("vit", "deit", "dinov2", "siglip"), _two_layer_norms_per_layer, "ViT, DeiT, DINOv2, SigLIP's vision tower"),
    ModelType(("deberta", "deberta-v2"), _two_layer_norms_per_layer, "DeBERTa-v2/v3 encoders"),
    ModelType(("modernbert",), _rotary_encoder_counts, "ModernBERT"),
    ModelType(("swin", "clip"), _lower_bound_counts, "Swin (legacy export), CLIP's text and vision towers"),
    ModelType(("t5", "mt5"), _t5_counts, "T5's encoder (legacy export) and decoder (with or without past; L = attentions)"),
    ModelType(("bart",), _bart_counts, "BART's encoder and decoder (with or without past; L = attentions)"),
    ModelType(("marian", "whisper"), _seq2seq_counts,
              "Marian's and Whisper's encoders and decoders (with or without past; L = attentions)"),
    ModelType(("gpt2",), decoder_counts, "GPT-2 with or without past"),
    ModelType(("llama", "mistral", "qwen2", "phi3", "gemma"), _llm(), "decoder LLMs with a KV cache"),
    ModelType(("qwen3",), _llm(qk_norms=True), "Qwen3 (RMSNorm on Q and K)"),
    ModelType(("gemma2",), _llm(sandwich_norms=True), "Gemma 2 (norms on both sides of each sub-layer)"),
)
BY_NAME = {name: model_type for model_type in _TYPES for name in model_type.names}
MODEL_TYPES = tuple(BY_NAME)  # what ``--model_type`` accepts

# ONNX Runtime's model types tfopt has no measured rules for: the one-line answer names the nearest.
NOT_COVERED = {
    "gpt_neox": "no rules measured on GPT-NeoX exports yet (parallel attention, partial rotary); decoder LLMs: llama",
    "phi": "no rules measured on Phi-1/2 exports yet; Phi-3: phi3",
    "gpt2_tf": "GPT-2 from tf2onnx is not measured; torch's GPT-2: gpt2",
    "tnlr": "no rules for Turing NLR",
    "conformer": "no rules for Conformer",
    "unet": "Stable Diffusion's UNet is not a transformer family tfopt covers",
    "vae": "Stable Diffusion's VAE is not a transformer family tfopt covers",
    "mmdit": "no rules for MMDiT",
    "sam2": "no rules for SAM2",
}


def model_type_of(name: str) -> ModelType | None:
    return BY_NAME.get(name)


def not_covered_reason(name: str) -> str | None:
    return NOT_COVERED.get(name)


_SHORT = {ATTENTION_KEY: "attention", GELU_KEY: "gelu"}


def counts_formula(model_type: ModelType) -> str:
    """The counts as ``op aL+b`` text (``L/2``: one per two layers), read from the counts at 2 and 4
    layers (they are linear in L for even L)."""
    two, four = model_type.counts(2), model_type.counts(4)
    parts = []
    for key, at_four in four.items():
        doubled_slope = at_four - two.get(key, 0)  # twice the count per layer
        offset = two.get(key, 0) - doubled_slope
        halves = {0: "", 1: "L/2", 2: "L"}
        term = halves.get(doubled_slope, f"{doubled_slope // 2}L" if doubled_slope % 2 == 0 else f"{doubled_slope}L/2")
        if offset or not term:
            term = f"{term}{'+' if term and offset > 0 else ''}{offset}" if term else str(offset)
        parts.append(f"{_SHORT.get(key, key)} {term}")
    return ", ".join(parts)


def types_help() -> str:
    """One line per type for ``tfopt optimize --help`` and the docs: names, what it was measured on, its counts."""
    return "\n".join(
        f"{'/'.join(model_type.names)}: {model_type.measured_on}; expects {counts_formula(model_type)}" for model_type in _TYPES
    )
