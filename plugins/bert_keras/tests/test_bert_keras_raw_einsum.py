"""keras-hub's BertBackbone with its einsums left as ONNX ``Einsum`` nodes: still every layer fused, still Keras' numbers.

tf2onnx lowers ``Einsum`` to MatMul/Gemm only when its einsum optimizer can read the
operand's rank; when it cannot (or the optimizer is not run) the graph keeps raw
``Einsum("abc,cde->abde")`` projections and ``Einsum("abcd,cde->abe")`` output layers. The
optimizer is switched off here to get that graph from the real converter.
"""

from __future__ import annotations

import onnx

import tfopt_bert_keras
from tfopt.graph import expected_counts, fuse_file


def test_raw_einsum_backbone_fuses_every_layer(keras_run_context, tmp_path, monkeypatch):
    import tf2onnx.optimizer

    from tfopt_bert_keras.models import TINY_BACKBONE, random_backbone

    optimizers = {name: step for name, step in tf2onnx.optimizer._get_optimizers().items() if name != "einsum_optimizer"}
    monkeypatch.setattr(tf2onnx.optimizer, "_optimizers", optimizers)
    ctx = keras_run_context(None, tmp_path / "run")
    exported = tfopt_bert_keras.export_model(ctx, random_backbone(**TINY_BACKBONE), "tiny-keras-hub-bert")
    einsums = [n.attribute[0].s.decode() for n in onnx.load(str(exported.model_path)).graph.node if n.op_type == "Einsum"]
    assert einsums.count("abc,cde->abde") == 3 * TINY_BACKBONE["num_layers"]  # the graph under test has them

    fused = fuse_file(exported.model_path, tmp_path / "fused.onnx", exported.info)
    expected = expected_counts(exported.info, exported.info.num_layers)
    found = {key: sum(fused.op_counts.get(op, 0) for op in key.split("|")) for key in expected}
    assert found == expected and fused.missing == [] and "Einsum" not in fused.op_counts, fused.op_counts
    assert fused.rule_counts["EinsumAsMatMul"] >= 4 * TINY_BACKBONE["num_layers"]
    result = tfopt_bert_keras.verify_hook(ctx, exported, fused.model_path, tfopt_bert_keras.make_dummy_inputs_hook(ctx, exported))
    assert result.passed, result.overall
