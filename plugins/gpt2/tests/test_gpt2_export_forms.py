"""The export matrix for GPT-2 with past: a user's own export, every dynamic-shape spelling, fused and compared with torch.

Each cell exports the adapter's decoder step (flat ``past_key_values.{i}.key/value`` inputs, a
mask over past + sequence, position ids) itself, spelled as tfopt.torch_kit.SPELLINGS lists, with
none of the adapter's own clean-up (it renames the dynamo exporter's symbols; a user's export
keeps ``s10``, ``s15 + s70``...). ``fuse_file`` must reach the full decoder counts (L attentions
with past, 1 EmbedLayerNormalization and 2L SkipLayerNormalization, L gelus, no Softmax left) and the fused model must
match torch within 1e-4 on left-padded batches with and without past (the export's own shape
only, for static exports). GPT-2 exported without a cache (causal attention, no past) is checked
the same way.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tfopt.bench import ort_session
from tfopt.graph import decoder_counts, fuse_file
from tfopt.results import ModelInfo
from tfopt.torch_kit import SPELLINGS, ExportForm, export_in_form
from tfopt_gpt2.decoder import ATTENTION_MASK, INPUT_IDS, POSITION_IDS, decoder_step, input_names, output_names, past_names, run_torch, torch_feed
from tfopt_gpt2.inputs import StepShape, feeds_for_shapes, left_padded_mask
from tfopt_gpt2.models import BUILTIN_MODELS, describe, random_model

EXAMPLE = StepShape(2, 5, 3)  # all > 1 and distinct: nothing specializes or merges
PARITY_SHAPES = [StepShape(1, 0, 4), StepShape(3, 6, 1), StepShape(2, 4, 3)]
TOLERANCE = 1e-4
GELU_OPS = ("BiasGelu", "FastGelu", "Gelu")


def _axes(num_layers: int) -> dict[str, dict[int, str]]:
    axes = {
        INPUT_IDS: {0: "batch", 1: "sequence"},
        ATTENTION_MASK: {0: "batch", 1: "past+sequence"},
        POSITION_IDS: {0: "batch", 1: "sequence"},
    }
    axes.update({name: {0: "batch", 2: "past"} for name in past_names(num_layers)})
    return axes


def _check_cell(tmp_path, form: ExportForm, attn: str = "sdpa", model: str = "tiny-gpt2"):
    builtin = BUILTIN_MODELS[model]
    source = describe(random_model(builtin.config(), lm_head=builtin.lm_head, attn_implementation=attn), model)
    step = decoder_step(source)
    (example,) = feeds_for_shapes(source, [EXAMPLE], seed=0)
    args = torch_feed(example, source.num_layers)
    run_torch(source, example, step)  # a mistake in the cell fails here, not as an exporter skip below
    names = input_names(source.num_layers)
    path = tmp_path / "exported.onnx"
    try:
        export_in_form(
            step, args, path, form, input_names=names, output_names=output_names(source),
            axes=_axes(source.num_layers), varargs_from=3,
        )
    except Exception as exc:  # the exporter's limit, not tfopt's: say which
        pytest.skip(f"torch cannot export {form.id}: {str(exc).splitlines()[0][:160]}")
    try:
        ort_session(path)
    except Exception as exc:  # torch 2.13 writes opset 18's Split(num_outputs) into opset 14-17 GPT-2 exports
        pytest.skip(f"ONNX Runtime refuses torch's {form.id} export too: {str(exc).splitlines()[0][-120:]}")
    layers = source.num_layers
    fused = fuse_file(path, tmp_path / "optimized.onnx", ModelInfo(model_type="gpt2", num_layers=layers))
    counts = fused.op_counts
    assert fused.missing == [], (form.id, fused.missing)
    assert counts.get("MultiHeadAttention", 0) == layers
    assert counts.get("SkipLayerNormalization", 0) == decoder_counts(layers)["SkipLayerNormalization"]
    assert counts.get("EmbedLayerNormalization", 0) == 1
    assert sum(counts.get(op, 0) for op in GELU_OPS) == layers
    assert counts.get("Softmax", 0) == 0
    session = ort_session(fused.model_path)
    outputs = output_names(source)
    shapes = [EXAMPLE] if form.spelling == "static" else PARITY_SHAPES
    for shape, feed in zip(shapes, feeds_for_shapes(source, shapes, seed=1)):
        expected = run_torch(source, feed, step)
        actual = dict(zip(outputs, session.run(outputs, feed)))
        valid = feed[ATTENTION_MASK][:, -shape.sequence_length:].astype(bool)  # left padding: padded queries are free
        worst = float(np.abs(actual[outputs[0]] - expected[outputs[0]])[valid].max())
        assert worst <= TOLERANCE, (form.id, shape, worst)
        kept = feed[ATTENTION_MASK].astype(bool)  # presents: every kept position of every layer
        for name in outputs[1:]:
            diff = np.abs(actual[name] - expected[name]).transpose(0, 2, 1, 3)[kept]
            assert float(diff.max()) <= TOLERANCE, (form.id, shape, name)


# torch refuses "named-distinct" here (its own constraint check: the pasts' batch Dims must be one Dim),
# so CI leaves it out; the slow matrix keeps it as a skip with torch's reason.
COVER = [
    *[(ExportForm("dynamo", spelling), "sdpa") for spelling in SPELLINGS["dynamo"] if spelling != "named-distinct"],
    *[(ExportForm("legacy", spelling), "sdpa") for spelling in SPELLINGS["legacy"]],
    (ExportForm("dynamo", "Dim.DYNAMIC", 18), "eager"),
    (ExportForm("legacy", "dynamic_axes", 14), "eager"),
]


@pytest.mark.parametrize(("form", "attn"), COVER, ids=[f"{form.id}-{attn}" for form, attn in COVER])
def test_export_form_fuses_fully_with_parity(tmp_path, form, attn):
    _check_cell(tmp_path, form, attn)


ALL_FORMS = [ExportForm(exporter, spelling, opset) for exporter, spellings in SPELLINGS.items() for spelling in spellings for opset in (14, 17, 18, 20)]


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("form", ALL_FORMS, ids=[f.id for f in ALL_FORMS])
def test_every_spelling_opset_and_attention(tmp_path, form, attn):
    _check_cell(tmp_path, form, attn, model="tiny-distilgpt2")


class NoCache(torch.nn.Module):
    """GPT-2 called without a cache (input_ids, attention_mask -> logits): causal attention without past."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


NO_PAST_CELLS = [
    (ExportForm("dynamo", "Dim.DYNAMIC"), "sdpa"),
    (ExportForm("dynamo", "Dim.AUTO"), "eager"),
    (ExportForm("dynamo", "static"), "sdpa"),
    (ExportForm("legacy", "dynamic_axes-distinct"), "sdpa"),
    (ExportForm("legacy", "dynamic_axes", 14), "eager"),
]


@pytest.mark.parametrize(("form", "attn"), NO_PAST_CELLS, ids=[f"{form.id}-{attn}" for form, attn in NO_PAST_CELLS])
def test_without_past_fuses_fully_with_parity(tmp_path, form, attn):
    builtin = BUILTIN_MODELS["tiny-gpt2"]
    model = random_model(builtin.config(), lm_head=True, attn_implementation=attn)
    wrapper = NoCache(model).eval()
    rng = np.random.default_rng(0)

    def feed(batch, sequence):
        mask = left_padded_mask(batch, sequence, rng)
        return {"input_ids": rng.integers(0, builtin.config().vocab_size, (batch, sequence)), "attention_mask": mask}

    example = feed(2, 7)
    args = tuple(torch.from_numpy(example[name]) for name in ("input_ids", "attention_mask"))
    path = tmp_path / "exported.onnx"
    try:
        export_in_form(
            wrapper, args, path, form, input_names=["input_ids", "attention_mask"], output_names=["logits"],
            axes={name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask")},
        )
    except Exception as exc:  # the exporter's limit, not tfopt's: say which
        pytest.skip(f"torch cannot export {form.id}: {str(exc).splitlines()[0][:160]}")
    layers = builtin.config().n_layer
    fused = fuse_file(path, tmp_path / "optimized.onnx", ModelInfo(model_type="gpt2", num_layers=layers))
    assert fused.missing == [], (form.id, fused.missing)
    assert fused.op_counts.get("MultiHeadAttention", 0) == layers and fused.op_counts.get("Softmax", 0) == 0
    session = ort_session(fused.model_path)
    for batch, sequence in [(2, 7)] if form.spelling == "static" else [(1, 5), (3, 9), (2, 7)]:
        values = feed(batch, sequence)
        with torch.inference_mode():
            expected = wrapper(*(torch.from_numpy(values[n]) for n in ("input_ids", "attention_mask"))).numpy()
        (actual,) = session.run(None, values)
        valid = values["attention_mask"].astype(bool)
        assert float(np.abs(actual - expected)[valid].max()) <= TOLERANCE, (form.id, batch, sequence)


def test_without_past_a_mask_that_is_not_causal_is_not_fused(tmp_path):
    """The causal comparison turned from <= into < (a token no longer sees itself): the probe refuses, attention stays."""
    builtin = BUILTIN_MODELS["tiny-gpt2"]
    wrapper = NoCache(random_model(builtin.config(), lm_head=True)).eval()
    args = (torch.randint(0, 100, (2, 7)), torch.ones(2, 7, dtype=torch.int64))
    path = tmp_path / "exported.onnx"
    export_in_form(
        wrapper, args, path, ExportForm("dynamo", "Dim.DYNAMIC"), input_names=["input_ids", "attention_mask"],
        output_names=["logits"], axes={name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask")},
    )
    proto = onnx.load(str(path))
    comparisons = [node for node in proto.graph.node if node.op_type == "LessOrEqual"]
    assert len(comparisons) == 1
    comparisons[0].op_type = "Less"
    onnx.save(proto, str(path))
    layers = builtin.config().n_layer
    fused = fuse_file(path, tmp_path / "optimized.onnx", ModelInfo(model_type="gpt2", num_layers=layers), validate=False)
    # not MultiHeadAttention(unidirectional); ONNX's Attention, which applies the graph's own mask, may take it
    assert fused.op_counts.get("MultiHeadAttention", 0) == 0
    assert fused.op_counts.get("Softmax", 0) + fused.rule_counts.get("AdditiveMaskAttention", 0) == layers
    assert fused.op_counts.get("SkipLayerNormalization", 0) + fused.op_counts.get("EmbedLayerNormalization", 0) == 2 * layers + 1  # the rest fuses
