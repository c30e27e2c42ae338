"""Generated ids stay inside the table they index, also through tf2onnx's negative-id wrap (Keras lookups).

Without it, bert_keras's segment_ids (a 2-row table) got ids up to 99: validation's reference
never ran, so the fused model's numbers were never compared (the conformance kit now fails that).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tfopt.feeds import dummy_feeds, graph_inputs


def _keras_style_lookup(path, rows: int = 2) -> None:
    """out = table[ids + (ids < 0) * rows], as tf2onnx writes a Keras Embedding."""
    nodes = [
        helper.make_node("Cast", ["segment_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Less", ["ids32", "zero"], ["negative"]),
        helper.make_node("Cast", ["negative"], ["negative32"], to=TensorProto.INT32),
        helper.make_node("Mul", ["negative32", "rows"], ["shift"]),
        helper.make_node("Add", ["ids32", "shift"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["out"]),
    ]
    inits = [
        numpy_helper.from_array(np.arange(rows * 4, dtype=np.float32).reshape(rows, 4), "table"),
        numpy_helper.from_array(np.array(0, np.int32), "zero"),
        numpy_helper.from_array(np.array(rows, np.int32), "rows"),
    ]
    graph = helper.make_graph(
        nodes, "lookup",
        [helper.make_tensor_value_info("segment_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "sequence", 4])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_ids_through_a_negative_id_wrap_stay_inside_the_table(tmp_path):
    path = tmp_path / "lookup.onnx"
    _keras_style_lookup(path)
    assert graph_inputs(path)[0].id_limit == 2
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for feed in dummy_feeds(path, batch_sizes=(2,), sequence_lengths=(16,)):
        assert feed["segment_ids"].max() <= 1
        session.run(None, feed)  # ORT refuses an index outside the table


def test_ids_sliced_before_their_lookup_stay_inside_the_table(tmp_path):
    """transformers 2.x GPT-2 (ONNX Runtime's gpt2_past.onnx) slices input_ids before the word lookup."""
    nodes = [
        helper.make_node("Slice", ["input_ids", "start", "end", "axis"], ["sliced"]),
        helper.make_node("Gather", ["table", "sliced"], ["out"]),
    ]
    inits = [
        numpy_helper.from_array(np.ones((20, 4), np.float32), "table"),
        *(numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("start", 0), ("end", 2**62), ("axis", 1))),
    ]
    graph = helper.make_graph(
        nodes, "sliced", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits,
    )
    path = tmp_path / "sliced.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert graph_inputs(path)[0].id_limit == 20
