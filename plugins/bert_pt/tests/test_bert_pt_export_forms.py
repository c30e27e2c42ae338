"""The export matrix: BERT-family encoders exported the ways users export them, fused and compared with torch.

Every cell exports a tiny model itself (not through the adapter, whose own spelling the other
tests cover) with one exporter, one dynamic-shape spelling (tfopt.torch_kit.SPELLINGS), an
opset, an attention implementation, an input order and a set of inputs; then ``fuse_file``
must reach the family's full counts (the host's table for its model type, exactly: BERT's
layout has one EmbedLayerNormalization, L attentions, 2L SkipLayerNormalization, L gelus;
plus the per-model facts of bert_pt_cases; no Softmax left) and match torch within 1e-4 on
padded batches of several shapes (the export's own shape only, for static exports).

CI runs a cover of the matrix (every spelling, family, opset, attention, order and input set at
least once); ``-m slow`` runs the products.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import ElectraConfig, XLMRobertaConfig

from bert_pt_cases import EMBED_LAYER_NORMS, FP32_TOLERANCE, LAYER_NORMS_LEFT
from tfopt.bench import ort_session
from tfopt.graph import expected_counts, fuse_file
from tfopt.results import ModelInfo
from tfopt.torch_kit import SPELLINGS, ExportForm, export_in_form
from tfopt_bert_pt.models import TINY_CONFIGS, random_model

CONFIGS = {
    "bert": TINY_CONFIGS["tiny-bert"],
    "distilbert": TINY_CONFIGS["tiny-distilbert"],
    "roberta": TINY_CONFIGS["tiny-roberta"],
    "albert": TINY_CONFIGS["tiny-albert"],
    "electra": lambda: ElectraConfig(
        vocab_size=136, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    ),
    "xlm-roberta": lambda: XLMRobertaConfig(
        vocab_size=150, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
    ),
    "mpnet": TINY_CONFIGS["tiny-mpnet"],
    "deberta-v2": TINY_CONFIGS["tiny-deberta-v2"],
    "deberta-v3": TINY_CONFIGS["tiny-deberta-v3"],
    "modernbert": TINY_CONFIGS["tiny-modernbert"],
}
MODEL_TYPE = {"deberta-v2": "deberta", "deberta-v3": "deberta"}  # tfopt's name where the family's differs
NO_SEGMENTS = ("distilbert", "mpnet", "deberta-v2", "deberta-v3", "modernbert")  # no token_type_ids to export
EAGER_ONLY = ("mpnet", "deberta-v2", "deberta-v3")  # transformers has no sdpa for them
EXAMPLE = (2, 8)  # the export's example (batch, sequence): all > 1, so nothing specializes
PARITY_SHAPES = ((1, 5), (3, 11), (2, 8))


class Encoder(torch.nn.Module):
    """Takes the inputs positionally in ``names`` order (the order a user's own export chose)."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, tuple(names)

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).last_hidden_state


def _names(family: str, order: str, inputs: str) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if family not in NO_SEGMENTS and inputs != "minimal":
        names.append("token_type_ids")
    if inputs == "with-position-ids":
        names.append("position_ids")
    return names[::-1] if order == "reversed" else names


def _feed(names, batch, sequence, config, rng, pad_first_row=False) -> dict[str, np.ndarray]:
    mask = np.ones((batch, sequence), np.int64)
    for row in range(batch):  # right padding, a different amount per row; row 0 full
        if row or pad_first_row:
            mask[row, max(1, sequence - 1 - 2 * row):] = 0
    values = {
        "input_ids": rng.integers(3, config.vocab_size, (batch, sequence)),
        "attention_mask": mask,
        "token_type_ids": (np.arange(sequence)[None, :] >= sequence // 2).repeat(batch, 0) * int(getattr(config, "type_vocab_size", 1) > 1),
        "position_ids": np.arange(sequence)[None, :].repeat(batch, 0) + 2,
    }
    return {name: values[name].astype(np.int64) for name in names}


def _check_cell(tmp_path, family, form: ExportForm, attn="sdpa", order="natural", inputs="default"):
    if attn == "sdpa" and family in EAGER_ONLY:
        pytest.skip(f"transformers has no sdpa attention for {family}")
    config = CONFIGS[family]()
    model = random_model(config, attn_implementation=attn)
    names = _names(family, order, inputs)
    wrapper = Encoder(model, names).eval()
    rng = np.random.default_rng(0)
    example = _feed(names, *EXAMPLE, config, rng)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    with torch.inference_mode():
        wrapper(*args)  # a mistake in the cell fails here, not as an exporter skip below
    path = tmp_path / "exported.onnx"
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    try:
        export_in_form(
            wrapper, args, path, form,
            input_names=names, output_names=["last_hidden_state"], axes=axes, varargs_from=0,
        )
    except Exception as exc:  # the exporter's limit, not tfopt's: say which
        pytest.skip(f"torch cannot export {form.id}: {str(exc).splitlines()[0][:160]}")
    layers = config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layers
    info = ModelInfo(model_type=MODEL_TYPE.get(family, family), num_layers=layers)
    fused = fuse_file(path, tmp_path / "optimized.onnx", info)
    counts = fused.op_counts
    table = expected_counts(info, layers)  # the host's counts for the model type
    assert fused.missing == [], (form.id, fused.missing)
    assert table and {key: sum(counts.get(op, 0) for op in key.split("|")) for key in table} == table, (form.id, counts)
    assert counts.get("EmbedLayerNormalization", 0) == EMBED_LAYER_NORMS[f"tiny-{family}"]
    assert counts.get("MultiHeadAttention", 0) + counts.get("Attention", 0) == layers
    assert counts.get("Softmax", 0) == 0 and counts.get("LayerNormalization", 0) == LAYER_NORMS_LEFT[f"tiny-{family}"]
    session = ort_session(fused.model_path)
    shapes = [EXAMPLE] if form.spelling == "static" else PARITY_SHAPES
    for batch, sequence in shapes:
        feed = _feed(names, batch, sequence, config, rng)
        with torch.inference_mode():
            expected_out = wrapper(*(torch.from_numpy(feed[n]) for n in names)).numpy()
        (actual,) = session.run(None, feed)
        valid = feed["attention_mask"].astype(bool)
        assert np.isfinite(actual[valid]).all()
        worst = float(np.abs(actual - expected_out)[valid].max())
        assert worst <= FP32_TOLERANCE, (form.id, batch, sequence, worst)


# CI's cover: every spelling of both exporters on BERT, every BERT-layout family on Dim.DYNAMIC, the
# opsets, eager attention, another input order and other input sets; MPNet, DeBERTa-v2/v3 and
# ModernBERT once each on a spelling the adapter's own exports (test_fusion_matrix) do not use,
# ModernBERT again at static shapes (its rotary cos/sin folded to constants).
LATER_FAMILIES = ("mpnet", "deberta-v2", "deberta-v3", "modernbert")
COVER = [
    *[("bert", ExportForm("dynamo", spelling), "sdpa", "natural", "default") for spelling in SPELLINGS["dynamo"]],
    *[("bert", ExportForm("legacy", spelling), "sdpa", "natural", "default") for spelling in SPELLINGS["legacy"]],
    *[(family, ExportForm("dynamo", "Dim.DYNAMIC"), "sdpa", "natural", "default") for family in CONFIGS
      if family != "bert" and family not in LATER_FAMILIES],
    ("mpnet", ExportForm("legacy", "dynamic_axes-distinct"), "eager", "reversed", "with-position-ids"),
    ("deberta-v2", ExportForm("dynamo", "Dim.AUTO"), "eager", "natural", "with-position-ids"),
    ("deberta-v3", ExportForm("legacy", "dynamic_axes", 18), "eager", "reversed", "default"),
    ("modernbert", ExportForm("dynamo", "Dim.DYNAMIC"), "eager", "natural", "with-position-ids"),
    ("modernbert", ExportForm("legacy", "static"), "sdpa", "natural", "default"),  # rotary tables folded to constants
    ("bert", ExportForm("dynamo", "Dim.DYNAMIC", 18), "sdpa", "natural", "default"),
    ("roberta", ExportForm("dynamo", "Dim.AUTO", 17), "eager", "natural", "default"),
    ("bert", ExportForm("legacy", "dynamic_axes-distinct", 14), "eager", "natural", "default"),
    ("albert", ExportForm("legacy", "dynamic_axes", 17), "sdpa", "reversed", "default"),
    ("bert", ExportForm("dynamo", "Dim.DYNAMIC", 20), "eager", "reversed", "minimal"),
    ("electra", ExportForm("dynamo", "named-distinct"), "sdpa", "natural", "with-position-ids"),
    ("xlm-roberta", ExportForm("legacy", "dynamic_axes-distinct", 18), "sdpa", "reversed", "with-position-ids"),
]


def _id(cell) -> str:
    family, form, attn, order, inputs = cell
    return "-".join([family, form.id, attn, order, inputs])


@pytest.mark.parametrize("cell", COVER, ids=[_id(c) for c in COVER])
def test_export_form_fuses_fully_with_parity(tmp_path, cell):
    _check_cell(tmp_path, *cell)


ALL_FORMS = [ExportForm(exporter, spelling) for exporter, spellings in SPELLINGS.items() for spelling in spellings]


# ModernBERT at static shapes: the exporter folds the rotary cos/sin into constants, which the
# shared rotary rule takes since 2026-12-07 (it was a strict xfail: 2L RotaryEmbedding expected, 0 found).
FAMILY_FORMS = [pytest.param(family, form, id=f"{family}-{form.id}") for family in CONFIGS for form in ALL_FORMS]


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("family", "form"), FAMILY_FORMS)
def test_every_family_every_spelling(tmp_path, family, form, attn):
    _check_cell(tmp_path, family, form, attn)


OPSET_FORMS = [ExportForm(f.exporter, f.spelling, opset) for f in ALL_FORMS for opset in (14, 17, 18, 20)]


@pytest.mark.slow
@pytest.mark.parametrize("form", OPSET_FORMS, ids=[f.id for f in OPSET_FORMS])
def test_every_spelling_every_opset(tmp_path, form):
    _check_cell(tmp_path, "bert", form)


@pytest.mark.slow
@pytest.mark.parametrize(("order", "inputs"), list(itertools.product(["natural", "reversed"], ["minimal", "default", "with-position-ids"])))
@pytest.mark.parametrize("form", ALL_FORMS, ids=[f.id for f in ALL_FORMS])
def test_every_spelling_every_input_set(tmp_path, form, order, inputs):
    _check_cell(tmp_path, "bert", form, "sdpa", order, inputs)
