"""int8 verification judges pooled embeddings: sound quantization passes, a corrupted scale fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tfopt.plugins import adapter_caller
from tfopt.testing import check_adapter, isolated_plugin_manager
from tfopt.verify import INT8_MIN_RANK_CORRELATION, INT8_POOLED_MIN_COSINE, pooled_agreement, pooled_problem


def test_pooled_agreement_arithmetic():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4, 5, 8))
    mask = np.ones((4, 5))
    mask[1, 3:] = 0
    same = pooled_agreement([reference], [reference.copy()], [mask])
    assert same["min_cosine"] == pytest.approx(1.0) and same["rank_correlation"] == pytest.approx(1.0)
    assert same["top1_agreement"] == 1.0 and same["sequences"] == 4
    padded_garbage = reference.copy()
    padded_garbage[1, 3:] = 1e6  # padded positions do not count
    assert pooled_agreement([reference], [padded_garbage], [mask])["min_cosine"] == pytest.approx(1.0)
    flipped = reference.copy()
    flipped[2] *= -1  # one sequence's embedding points the other way
    found = pooled_agreement([reference], [flipped], [mask])
    assert found["min_cosine"] == pytest.approx(-1.0)
    assert "cosine" in pooled_problem(found)
    shuffled = reference[[1, 2, 3, 0]]  # every embedding replaced by another's: pairwise order lost
    assert pooled_agreement([reference], [shuffled], [mask])["min_cosine"] < INT8_POOLED_MIN_COSINE


def _corrupt_weight_scales(path: Path, factor: float) -> str:
    model = onnx.load(str(path))
    inits = {init.name: init for init in model.graph.initializer}
    scale_names = [node.input[1] for node in model.graph.node if node.op_type == "Mul" and node.input[1].endswith("_scale") and node.input[1] in inits]
    assert scale_names, "no weight scale found in the int8 model"
    # every weight scale: tiny-bert's random layers are small next to its residual path, so one bad
    # layer barely moves it (on all-MiniLM-L6-v2 one scale x3 fails; docs/qat.md)
    for name in set(scale_names):
        inits[name].CopyFrom(numpy_helper.from_array((numpy_helper.to_array(inits[name]) * factor).astype(np.float32), name))
    onnx.save(model, str(path))
    return scale_names[0]


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("bert-pt-int8")
    return check_adapter("bert_pt", source="tiny-bert", options={"precision": "int8"}, work_dir=work), work


def test_int8_passes_on_pooled_embeddings(int8_run):
    verify = int8_run[0].report["verify"]
    assert verify["passed"] and verify["tolerance"] == INT8_POOLED_MIN_COSINE
    pooled = verify["cases"][-1]
    assert pooled["criterion"] == "pooled embeddings" and pooled["min_cosine"] >= INT8_POOLED_MIN_COSINE
    assert pooled["rank_correlation"] >= INT8_MIN_RANK_CORRELATION


@pytest.mark.parametrize("factor", [4.0, 16.0])
def test_a_corrupted_scale_fails(int8_run, tmp_path, factor):
    import shutil

    from tfopt.results import RunContext
    from tfopt_bert_pt.export import export_source

    outcome, work = int8_run
    final = Path(outcome.report["outputs"]["final"])
    final = final if final.is_absolute() else work / "run" / final
    int8 = tmp_path / "corrupted.onnx"
    shutil.copy(final, int8)
    _corrupt_weight_scales(int8, factor)
    pm = isolated_plugin_manager(tmp_path)
    ctx = RunContext(family="bert_pt", source="tiny-bert", work_dir=tmp_path / "again", options={"precision": "int8"})
    ctx.work_dir.mkdir()
    exported = export_source(ctx)
    feeds = adapter_caller(pm, "bert_pt", "make_dummy_inputs")(ctx=ctx, exported=exported)
    result = adapter_caller(pm, "bert_pt", "verify")(ctx=ctx, exported=exported, model_path=int8, inputs=feeds)
    assert not result.passed
    assert "pooled-embedding cosine" in result.failure or "rank correlation" in result.failure
    from tfopt.pipeline import verification_message

    assert "max abs diff" not in verification_message(result)  # the failure names the int8 criterion
