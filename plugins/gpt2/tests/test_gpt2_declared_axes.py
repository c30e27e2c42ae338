"""GPT-2 with past as torch's documented dynamo export declares it: every input has symbols of its own.

``torch.onnx.export(dynamo=True, dynamic_shapes=...)`` with ``Dim.DYNAMIC`` names the axes
``input_ids: [s10, s70]``, ``attention_mask: [s43, s53]``, ``past_key_values.0.key: [s10, 4, s15, 8]``,
``past_key_values.0.value: [s10, 4, s89, 8]``: nothing in the names says that the mask spans
past + sequence. Validation used to size every such axis alike, the graph refused the feeds
(``GatherND: invalid index``) and the model was written with "parity not checked". The feeds now
follow the graph (the Concat of each past with its new keys; the mask spans both).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from transformers import GPT2Config

from gpt2_cases import shifted_output_model
from tfopt.graph import fuse_file
from tfopt.graph.validate import Reference
from tfopt.results import ModelInfo
from tfopt.torch_kit import quiet_export
from tfopt_gpt2.decoder import decoder_step, input_names, output_names, past_names, torch_feed
from tfopt_gpt2.inputs import StepShape, feeds_for_shapes
from tfopt_gpt2.models import describe, random_model

CONFIG = dict(n_positions=64, n_head=4, n_embd=32, n_layer=2, vocab_size=120, initializer_range=0.2)


def export_as_declared(path, *, own_symbols: bool = False) -> None:
    """The tiny GPT-2 exported with dynamo and Dim.DYNAMIC on every dynamic axis, its declarations
    kept as torch wrote them (the adapter renames them; a user's export does not).
    ``own_symbols``: every input axis gets a symbol no other has (as ``input_ids: [s33, s41]``)."""
    source = describe(random_model(GPT2Config(**CONFIG)), "declared")
    (feed,) = feeds_for_shapes(source, [StepShape(2, 5, 3)], seed=0)
    dynamic = torch.export.Dim.DYNAMIC
    tokens = {0: dynamic, 1: dynamic}
    past = tuple({0: dynamic, 2: dynamic} for _ in past_names(source.num_layers))
    with quiet_export():
        torch.onnx.export(
            decoder_step(source), torch_feed(feed, source.num_layers), str(path), dynamo=True,
            dynamic_shapes=(tokens, tokens, tokens, past), input_names=input_names(source.num_layers),
            output_names=output_names(source), opset_version=20, external_data=False, verbose=False,
        )
    if own_symbols:
        model = onnx.load(str(path))
        for index, value in enumerate(model.graph.input):
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if dim.dim_param:
                    dim.dim_param = f"d{index}_{axis}"
        onnx.save(model, str(path))


@pytest.fixture(scope="module", params=[False, True], ids=["as-exported", "own-symbols"])
def declared(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("declared") / "model.onnx"
    export_as_declared(path, own_symbols=request.param)
    return path


def test_the_export_declares_no_relation_between_mask_and_past(declared):
    dims = {value.name: [d.dim_param for d in value.type.tensor_type.shape.dim] for value in onnx.load(str(declared)).graph.input}
    assert set(dims["attention_mask"]).isdisjoint(dims["past_key_values.0.key"] + dims["input_ids"])


def test_validation_compares_numbers_on_feeds_that_fit_the_graph(declared, tmp_path):
    result = fuse_file(declared, tmp_path / "out.onnx", ModelInfo("gpt2", num_heads=4, hidden_size=32))
    validation = result.validation
    assert validation.passed and validation.feeds == 2, validation.notes
    assert not any("parity not checked" in note for note in validation.notes)
    assert validation.max_diff < 1e-5


def test_a_wrong_model_is_refused_on_those_feeds(declared, tmp_path):
    shifted_output_model(declared, tmp_path / "wrong.onnx", "logits", 1e-2, column=3)
    validation = Reference(declared).validate(tmp_path / "wrong.onnx")
    assert not validation.passed and "output 'logits' differs from the input model's" in validation.problem
    assert "attention_mask [2, 10]" in validation.problem and "past_key_values.0.key [2, 4, 3, 8]" in validation.problem
