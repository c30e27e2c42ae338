"""Generation over two ONNX graphs, an encoder and a decoder with past: the seq2seq adapter's layout.

The encoder graph takes the source (``input_ids`` + ``attention_mask``, or Whisper's
``input_features``) and returns ``encoder_hidden_states`` and every decoder layer's
cross-attention keys and values (``present.{i}.encoder.key/value``), computed once per
source. The decoder graph takes the new token(s), the source's padding mask
(``encoder_attention_mask``, absent for Whisper) and the past: the self-attention cache
(``past_key_values.{i}.decoder.key/value``, length 0 at the first step) and the cross
keys/values (``past_key_values.{i}.encoder.key/value``, fed unchanged every step); it
returns ``logits`` and the grown self-attention cache (``present.{i}.decoder.key/value``).

The loop runs with IO binding: the cross keys/values are bound once as ONNX Runtime values
(repeated for the beams once, never copied again) and each step's self-attention presents
are bound as the next step's past as they are. Beam search reorders the self cache when a
beam continues another beam's row, as transformers does. The token choice is
:mod:`tfopt.beam_search` (greedy and beam search with transformers' semantics).

The tokens generation starts and stops with are stored in the decoder graph's metadata by
the exporter (:data:`TOKEN_KEYS`), so ``tfopt generate`` needs nothing but the run directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TfoptError

INPUT_IDS, ATTENTION_MASK, INPUT_FEATURES = "input_ids", "attention_mask", "input_features"
ENCODER_HIDDEN, ENCODER_MASK, LOGITS = "encoder_hidden_states", "encoder_attention_mask", "logits"
TOKEN_KEYS = ("decoder_start_token_id", "eos_token_id", "pad_token_id")  # decoder metadata_props
_SELF_PAST = re.compile(r"^past_key_values\.(\d+)\.decoder\.(key|value)$")
_CROSS_PAST = re.compile(r"^past_key_values\.(\d+)\.encoder\.(key|value)$")
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def self_past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.decoder.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def cross_past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.encoder.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_name(past: str) -> str:
    """The output that becomes the input ``past`` next step (or, for cross keys/values, the encoder's output)."""
    return past.replace("past_key_values.", "present.", 1)


@dataclass(frozen=True)
class GenerationTokens:
    decoder_start_token_id: int
    eos_token_id: int | None
    pad_token_id: int


def token_metadata(tokens: GenerationTokens) -> dict[str, str]:
    """What the exporter writes into the decoder's metadata_props (``eos_token_id`` -1 = none)."""
    eos = -1 if tokens.eos_token_id is None else tokens.eos_token_id
    return {"decoder_start_token_id": str(tokens.decoder_start_token_id), "eos_token_id": str(eos),
            "pad_token_id": str(tokens.pad_token_id)}


def tokens_from_metadata(metadata: dict[str, str], label: str) -> GenerationTokens:
    missing = [key for key in TOKEN_KEYS if key not in metadata]
    if missing:
        raise TfoptError(f"{label}: the decoder's metadata lacks {', '.join(missing)} (not a tfopt seq2seq export)")
    eos = int(metadata["eos_token_id"])
    return GenerationTokens(int(metadata["decoder_start_token_id"]), None if eos < 0 else eos, int(metadata["pad_token_id"]))


def _session(model, label: str):
    from .bench import ort_session

    if hasattr(model, "get_inputs"):
        return model
    path = Path(model)
    if not path.is_file():
        raise TfoptError(f"{path}: no such ONNX file ({label})")
    return ort_session(path)


class EncoderDecoder:
    """An encoder session and a decoder session, driven together (greedy or beam search).

    ``encoder`` and ``decoder`` are ONNX files or loaded ``onnxruntime.InferenceSession``s.
    ``tokens`` defaults to what the decoder's metadata states.
    """

    def __init__(self, encoder, decoder, tokens: GenerationTokens | None = None):
        self.encoder = _session(encoder, "the encoder")
        self.decoder = _session(decoder, "the decoder")
        if tokens is None:
            tokens = tokens_from_metadata(self.decoder.get_modelmeta().custom_metadata_map, "the decoder")
        self.tokens = tokens
        names = [spec.name for spec in self.decoder.get_inputs()]
        self.self_past = [name for name in names if _SELF_PAST.match(name)]
        self.cross_past = [name for name in names if _CROSS_PAST.match(name)]
        if not self.self_past or not self.cross_past or INPUT_IDS not in names:
            raise TfoptError("the decoder is not a seq2seq decoding step: it needs input_ids and "
                             "past_key_values.{i}.decoder/encoder.key/value inputs")
        self.masked = ENCODER_MASK in names
        encoder_outputs = {spec.name for spec in self.encoder.get_outputs()}
        lacking = [present_name(name) for name in self.cross_past if present_name(name) not in encoder_outputs]
        if lacking:
            raise TfoptError(f"the encoder does not return the cross-attention keys/values the decoder reads ({lacking[0]}, ...)")
        self.decoder_outputs = [LOGITS, *(present_name(name) for name in self.self_past)]

    def encode(self, source: dict[str, np.ndarray]):
        """The cross keys/values (numpy, batch of the source) and the source mask for the decoder."""
        from .feeds import session_feed

        wanted = [present_name(name) for name in self.cross_past]
        outputs = self.encoder.run(wanted, session_feed(self.encoder, source))
        mask = source.get(ATTENTION_MASK)
        return dict(zip(self.cross_past, outputs)), mask

    def empty_self_past(self, batch_size: int) -> dict[str, np.ndarray]:
        past = {}
        for spec in self.decoder.get_inputs():
            if spec.name in self.self_past:
                heads, head_size = spec.shape[1], spec.shape[3]
                if not isinstance(heads, int) or not isinstance(head_size, int):
                    raise TfoptError(f"{spec.name}: the decoder does not declare its head count and head size {spec.shape}")
                past[spec.name] = np.zeros((batch_size, heads, 0, head_size), dtype=_NUMPY_TYPES.get(spec.type, np.float32))
        return past

    def stepper(self, source: dict[str, np.ndarray], num_beams: int = 1):
        """The ``step(tokens, beam_origin) -> logits`` callback :mod:`tfopt.beam_search` drives, for ``source``."""
        import onnxruntime as ort

        from .generation import run_bound

        cross, mask = self.encode(source)
        batch_size = next(iter(cross.values())).shape[0] * num_beams
        fixed = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(np.repeat(value, num_beams, axis=0)))
                 for name, value in cross.items()}  # bound every step, never copied again
        if self.masked:
            if mask is None:
                raise TfoptError("the decoder takes encoder_attention_mask: give the source's attention_mask")
            fixed[ENCODER_MASK] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(np.repeat(mask.astype(np.int64), num_beams, axis=0)))
        state = {"past": {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in self.empty_self_past(batch_size).items()}}
        binding = self.decoder.io_binding()

        def step(tokens: np.ndarray, beam_origin: np.ndarray | None) -> np.ndarray:
            past = state["past"]
            if beam_origin is not None and not np.array_equal(beam_origin, np.arange(batch_size)):
                past = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value.numpy()[beam_origin]))
                        for name, value in past.items()}
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
            binding.bind_cpu_input(INPUT_IDS, np.ascontiguousarray(tokens, dtype=np.int64))
            for name, value in {**fixed, **past}.items():
                binding.bind_ortvalue_input(name, value)
            for name in self.decoder_outputs:
                binding.bind_output(name, "cpu")
            run_bound(self.decoder, binding, "the decoder")
            outputs = dict(zip(self.decoder_outputs, binding.get_outputs()))
            state["past"] = {name: outputs[present_name(name)] for name in self.self_past}
            return outputs[LOGITS].numpy()[:, -1, :]

        return step

    def generate(self, source: dict[str, np.ndarray], max_new_tokens: int = 32, *, num_beams: int = 1,
                 length_penalty: float = 1.0, early_stopping: bool | str = False) -> np.ndarray:
        """New tokens (batch, <= max_new_tokens), without the start token; rows that ended early are filled as
        transformers fills them (greedy: the pad token; beam search: the pad token, or EOS where the pad token is 0).

        ``source``: the encoder's inputs (``input_ids`` and ``attention_mask``, or ``input_features``).
        Greedy for ``num_beams=1``; beam search as transformers' ``generate`` defines it otherwise.
        """
        from .beam_search import beam_search, greedy_search

        if max_new_tokens < 1 or num_beams < 1:
            raise TfoptError("max_new_tokens and num_beams must be at least 1")
        batch_size = next(iter(source.values())).shape[0]
        tokens = dict(decoder_start_token_id=self.tokens.decoder_start_token_id, eos_token_id=self.tokens.eos_token_id,
                      pad_token_id=self.tokens.pad_token_id)
        step = self.stepper(source, num_beams)
        if num_beams == 1:
            return greedy_search(step, batch_size, max_new_tokens, **tokens)
        return beam_search(step, batch_size, num_beams, max_new_tokens, length_penalty=length_penalty,
                           early_stopping=early_stopping, **tokens)
