"""``--model_type`` takes ONNX Runtime's names and tfopt's, each with counts a user's own export must meet.

Each case is a tiny random-weight model of the architecture, exported as a user would (torch's
dynamo exporter with ``Dim.DYNAMIC``; the legacy one where torch 2.13's dynamo exporter fails on
the model), optimized through the drop-in API with the type's name: no expected fusion may fall
short, no primitive may be left, and the written (validated) model matches torch on a padded batch.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from tfopt.graph.model_types import BY_NAME, MODEL_TYPES, NOT_COVERED, counts_formula, types_help

from tfopt_host_models import perturbed, text_encoder

torch = pytest.importorskip("torch")  # the TensorFlow deployment has none
transformers = pytest.importorskip("transformers")

LAYERS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
IMAGE = dict(image_size=32, patch_size=8, num_channels=3)


def test_every_name_is_listed_with_its_counts_and_aliases_share_them():
    text = types_help()
    assert all(name in text for name in MODEL_TYPES)
    assert BY_NAME["whisper"] is BY_NAME["marian"] and BY_NAME["siglip"] is BY_NAME["vit"]
    assert counts_formula(BY_NAME["qwen3"]) == (
        "SimplifiedLayerNormalization 2L+1, SkipSimplifiedLayerNormalization 2L, attention L, RotaryEmbedding 2L"
    )
    assert counts_formula(BY_NAME["bart"]) == "EmbedLayerNormalization 1, attention L, SkipLayerNormalization L, gelu L/2"
    assert not set(NOT_COVERED) & set(MODEL_TYPES)


def test_an_onnx_runtime_type_without_rules_is_refused_in_one_line_naming_the_nearest(tmp_path):
    from tfopt.cli import main

    source = tmp_path / "in.onnx"
    source.write_bytes(b"")
    result = CliRunner().invoke(main, ["optimize", "--input", str(source), "--output", str(tmp_path / "out.onnx"),
                                       "--model_type", "gpt_neox"])
    assert result.exit_code == 2
    assert "model type 'gpt_neox' is not covered" in result.output and "llama" in result.output
    assert not (tmp_path / "out.onnx").exists()


class _FirstOutput(torch.nn.Module):
    """An image or audio encoder's last hidden state."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features):
        return self.model(features)[0]


def _text(config_class, model_class, **extra):
    return "text", lambda: model_class(config_class(vocab_size=100, **{**LAYERS, **extra}))


def _vision(config_class, model_class, **extra):
    return "vision", lambda: model_class(config_class(**{**LAYERS, **IMAGE, **extra}))


def _bart_encoder():
    config = transformers.BartConfig(vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                     decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64)
    return transformers.BartModel(config).get_encoder()


def _whisper_encoder():
    config = transformers.WhisperConfig(vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
                                        max_source_positions=20, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                        decoder_start_token_id=1)
    return transformers.WhisperModel(config).encoder


def _t5_encoder():
    config = transformers.T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8)
    return transformers.T5EncoderModel(config)


def _swin():
    config = transformers.SwinConfig(image_size=32, patch_size=2, num_channels=3, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                     window_size=4)
    return transformers.SwinModel(config)


CASES = {  # id -> (input kind, builder, exporter, --model_type)
    "bert-dynamo": (*_text(transformers.BertConfig, transformers.BertModel), "dynamo", "bert"),
    "mpnet-dynamo": (*_text(transformers.MPNetConfig, transformers.MPNetModel), "dynamo", "mpnet"),
    "bart-encoder-dynamo": ("text", _bart_encoder, "dynamo", "bart"),
    "bart-encoder-legacy": ("text", _bart_encoder, "legacy", "bart"),
    "modernbert-dynamo": (*_text(transformers.ModernBertConfig, transformers.ModernBertModel, pad_token_id=0, bos_token_id=1,
                                 eos_token_id=2, cls_token_id=1, sep_token_id=2, max_position_embeddings=64), "dynamo", "modernbert"),
    "clip-text-dynamo": (*_text(transformers.CLIPTextConfig, transformers.CLIPTextModel, max_position_embeddings=32), "dynamo", "clip"),
    "clip-vision-dynamo": (*_vision(transformers.CLIPVisionConfig, transformers.CLIPVisionModel), "dynamo", "clip"),
    "dinov2-dynamo": (*_vision(transformers.Dinov2Config, transformers.Dinov2Model), "dynamo", "dinov2"),
    "siglip-legacy": (*_vision(transformers.SiglipVisionConfig, transformers.SiglipVisionModel), "legacy", "siglip"),
    "swin-legacy": ("vision", _swin, "legacy", "swin"),  # torch 2.13's dynamo exporter fails on Swin's window views
    "whisper-encoder-dynamo": ("audio", _whisper_encoder, "dynamo", "whisper"),
    "t5-encoder-legacy": ("text", _t5_encoder, "legacy", "t5"),  # and on T5's attention views
}
INPUT_NAMES = {"text": ["input_ids", "attention_mask"], "vision": ["pixel_values"], "audio": ["input_features"]}


def _inputs(kind: str, batch: int, sequence: int) -> tuple:
    if kind == "text":
        mask = torch.ones(batch, sequence, dtype=torch.int64)
        mask[-1, sequence - 3:] = 0  # the last row padded
        return torch.randint(3, 100, (batch, sequence)), mask
    if kind == "vision":
        return (torch.randn(batch, 3, 32, 32),)
    return (torch.randn(batch, 16, 40),)  # Whisper: 2 x max_source_positions frames


def _export(model, kind: str, exporter: str, path) -> None:
    from tfopt.torch_kit import quiet_export

    names = INPUT_NAMES[kind]
    args = _inputs(kind, 2, 7)
    with quiet_export():
        if exporter == "dynamo":
            dynamic = torch.export.Dim.DYNAMIC
            shapes = ({0: dynamic, 1: dynamic},) * 2 if kind == "text" else ({0: dynamic},)
            torch.onnx.export(model, args, str(path), dynamo=True, dynamic_shapes=shapes, input_names=names, output_names=["out"])
        else:
            axes = {name: {0: "batch", 1: "sequence"} if kind == "text" else {0: "batch"} for name in names}
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17, dynamic_axes=axes, input_names=names,
                              output_names=["out"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_users_export_fuses_fully_under_its_model_type_and_matches_torch(tmp_path, case):
    import tfopt

    kind, build, exporter, model_type = CASES[case]
    torch.manual_seed(0)
    model = perturbed(build())
    model = text_encoder(model) if kind == "text" else _FirstOutput(model).eval()
    source = tmp_path / "model.onnx"
    _export(model, kind, exporter, source)
    optimized = tfopt.optimize_model(source, model_type=model_type)
    assert optimized.missing_fusions == [], optimized.missing_fusions
    assert optimized.stats.leftover == {}
    written = optimized.save_model_to_file(tmp_path / "model.opt.onnx")  # validated before it is kept
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    for batch, sequence in [(1, 5), (3, 9)]:
        args = _inputs(kind, batch, sequence)
        with torch.no_grad():
            expected = model(*args).numpy()
        actual = session.run(None, {name: value.numpy() for name, value in zip(INPUT_NAMES[kind], args)})[0]
        if kind == "text":  # padded positions hold whatever each implementation leaves there
            real = args[1].numpy().astype(bool)
            actual, expected = actual[real], expected[real]
        np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


# --- decoders of encoder-decoder models: a step with past, as Optimum and ONNX Runtime's scripts export it ----

DECODER_LAYERS, HEADS, WIDTH, HEAD_SIZE = 2, 4, 64, 16


def _seq2seq(name: str):
    common = dict(vocab_size=100, d_model=WIDTH, encoder_layers=DECODER_LAYERS, decoder_layers=DECODER_LAYERS,
                  encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=128, decoder_ffn_dim=128,
                  max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    if name == "t5":
        return transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=100, d_model=WIDTH, d_kv=HEAD_SIZE, d_ff=128, num_layers=DECODER_LAYERS, num_heads=HEADS,
            relative_attention_num_buckets=8, decoder_start_token_id=0))
    if name == "bart":
        return transformers.BartForConditionalGeneration(transformers.BartConfig(**common))
    if name == "marian":
        return transformers.MarianMTModel(transformers.MarianConfig(**common, decoder_vocab_size=100))
    return transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(
        **{**common, "pad_token_id": 0, "bos_token_id": 1, "decoder_start_token_id": 1}, num_mel_bins=16,
        max_source_positions=20, max_target_positions=64))


class _DecoderStep(torch.nn.Module):
    """ids [B, S], encoder states [B, T, D], encoder mask [B, T] (not Whisper's), flat self and cross past
    -> logits and the self-attention presents; the cross keys/values are fed back unchanged."""

    def __init__(self, model, masked: bool):
        super().__init__()
        self.model, self.masked = model, masked

    def forward(self, input_ids, encoder_hidden_states, *rest):
        from transformers import DynamicCache, EncoderDecoderCache
        from transformers.modeling_outputs import BaseModelOutput

        mask, rest = (rest[0], rest[1:]) if self.masked else (None, rest)
        pairs = [(rest[2 * i], rest[2 * i + 1]) for i in range(len(rest) // 2)]
        cache = EncoderDecoderCache(DynamicCache(pairs[:DECODER_LAYERS]), DynamicCache(pairs[DECODER_LAYERS:]))
        extra = {"attention_mask": mask} if self.masked else {}
        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states), decoder_input_ids=input_ids,
                         past_key_values=cache, use_cache=True, **extra)
        presents = [t for layer in out.past_key_values.self_attention_cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *presents)


def _step_inputs(masked: bool, batch: int, new: int, past: int, source: int, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    args = [torch.randint(3, 100, (batch, new), generator=generator), torch.randn(batch, source, WIDTH, generator=generator)]
    if masked:
        mask = torch.ones(batch, source, dtype=torch.int64)
        mask[-1, source - 2:] = 0  # the last row's source padded
        args.append(mask)
    args += [torch.randn(batch, HEADS, past, HEAD_SIZE, generator=generator) for _ in range(2 * DECODER_LAYERS)]
    args += [torch.randn(batch, HEADS, source, HEAD_SIZE, generator=generator) for _ in range(2 * DECODER_LAYERS)]
    return tuple(args)


DECODER_CASES = {  # id -> (model, exporter, --model_type)
    "bart-decoder-dynamo": ("bart", "dynamo", "bart"),
    "marian-decoder-legacy": ("marian", "legacy", "marian"),
    "t5-decoder-legacy": ("t5", "legacy", "t5"),  # torch 2.13's dynamo exporter fails on T5's sdpa views
    "whisper-decoder-dynamo": ("whisper", "dynamo", "whisper"),
}


@pytest.mark.parametrize("case", sorted(DECODER_CASES))
def test_a_users_decoder_step_with_past_fuses_self_and_cross_attention_and_matches_torch(tmp_path, case):
    import tfopt
    from tfopt.torch_kit import quiet_export

    name, exporter, model_type = DECODER_CASES[case]
    masked = name != "whisper"  # Whisper's decoder attends to every audio frame
    torch.manual_seed(0)
    step = _DecoderStep(perturbed(_seq2seq(name)), masked).eval()
    layers = range(DECODER_LAYERS)
    past = [f"past_key_values.{i}.{side}.{kind}" for side in ("decoder", "encoder") for i in layers for kind in ("key", "value")]
    inputs = ["input_ids", "encoder_hidden_states", *(["encoder_attention_mask"] if masked else []), *past]
    outputs = ["logits", *(f"present.{i}.decoder.{kind}" for i in layers for kind in ("key", "value"))]
    source = tmp_path / "decoder.onnx"
    with quiet_export():
        if exporter == "dynamo":
            dynamic = torch.export.Dim.DYNAMIC
            masks = ({0: dynamic, 1: dynamic},) if masked else ()
            caches = tuple({0: dynamic, 2: dynamic} for _ in past)
            torch.onnx.export(step, _step_inputs(masked, 2, 2, 3, 5), str(source), dynamo=True, input_names=inputs,
                              output_names=outputs, dynamic_shapes=({0: dynamic, 1: dynamic}, {0: dynamic, 1: dynamic}, (*masks, *caches)))
        else:
            axes = {"input_ids": {0: "batch", 1: "new"}, "encoder_hidden_states": {0: "batch", 1: "source"},
                    "encoder_attention_mask": {0: "batch", 1: "source"}, "logits": {0: "batch", 1: "new"}}
            axes.update({n: {0: "batch", 2: "past" if ".decoder." in n else "source"} for n in past})
            axes.update({n: {0: "batch", 2: "total"} for n in outputs[1:]})
            torch.onnx.export(step, _step_inputs(masked, 2, 2, 3, 5), str(source), dynamo=False, opset_version=17,
                              input_names=inputs, output_names=outputs, dynamic_axes={k: v for k, v in axes.items() if k in inputs + outputs})
    optimized = tfopt.optimize_model(source, model_type=model_type)
    assert optimized.missing_fusions == [] and optimized.stats.leftover == {}
    assert optimized.get_fused_operator_statistics()["Attention"] == 2 * DECODER_LAYERS  # self with past, and cross
    written = optimized.save_model_to_file(tmp_path / "decoder.opt.onnx")
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    fed = {value.name for value in session.get_inputs()}
    for batch, new, past_length, source_length in [(2, 1, 4, 6), (3, 3, 7, 9)]:
        args = _step_inputs(masked, batch, new, past_length, source_length, seed=batch)
        with torch.no_grad():
            expected = [tensor.numpy() for tensor in step(*args)]
        actual = session.run(outputs, {n: a.numpy() for n, a in zip(inputs, args) if n in fed})
        for want, got in zip(expected, actual):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
