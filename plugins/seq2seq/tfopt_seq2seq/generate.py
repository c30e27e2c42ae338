"""transformers' own ``generate`` on the source model: the reference the ONNX loop must reproduce token for token.

Only the search is asked for (greedy or beam search with the given beams, length penalty and
early stopping); whatever else a checkpoint's generation config adds (forced first or last
tokens, repeat bans, Whisper's language and timestamp machinery) is left out, because the ONNX
loop does not implement it: transformers fills every setting left unset from the model's own
generation config, so that config is swapped for a blank one during the call. The result is the
new tokens without the start token, as :meth:`tfopt.encoder_decoder.EncoderDecoder.generate` returns them.
"""

from __future__ import annotations

import numpy as np

from .models import SourceModel


def generate_torch(source: SourceModel, encoder_feed: dict[str, np.ndarray], max_new_tokens: int, *, num_beams: int = 1,
                   length_penalty: float = 1.0, early_stopping: bool | str = False) -> np.ndarray:
    import torch
    from transformers import GenerationConfig
    from transformers.generation.utils import GenerationMixin

    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams, length_penalty=length_penalty,
        early_stopping=early_stopping, decoder_start_token_id=source.decoder_start_token_id,
        eos_token_id=source.eos_token_id, pad_token_id=source.pad_token_id,
    )
    feed = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in encoder_feed.items()}
    model, saved = source.model, source.model.generation_config
    model.generation_config = GenerationConfig()
    try:
        with torch.inference_mode():
            # GenerationMixin's generate: Whisper's own override adds its language/task machinery
            output = GenerationMixin.generate(model, **feed, generation_config=config)
    finally:
        model.generation_config = saved
    return output[:, 1:].numpy()
