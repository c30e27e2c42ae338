"""Inputs that are not text: image and audio grids, rows and cases keyed by the input's own axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt import default_plugin
from tfopt.errors import TfoptError
from tfopt.feeds import dummy_feeds, feed_shape, graph_inputs, shape_axes
from tfopt.graph import read_io_spec
from tfopt.html_report import _shape_label
from tfopt.report import latency_lines
from tfopt.results import ExportResult, ModelInfo, RunContext


def _save(path: Path, name: str, dims: list, elem=TensorProto.FLOAT) -> Path:
    """y = ReduceMean(x * 2) over every axis but the batch: any input shape works."""
    nodes = [
        helper.make_node("Mul", [name, "two"], ["scaled"]),
        helper.make_node("ReduceMean", ["scaled", "axes"], ["y"], keepdims=0),
    ]
    rank = len(dims)
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info(name, elem, dims)], [helper.make_tensor_value_info("y", elem, ["batch"])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two"), numpy_helper.from_array(np.arange(1, rank, dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def image_model(tmp_path):
    return _save(tmp_path / "image.onnx", "pixel_values", ["batch", 3, 8, 8])


@pytest.fixture
def audio_model(tmp_path):
    return _save(tmp_path / "audio.onnx", "input_values", ["batch", "samples"])


def _exported(path: Path) -> ExportResult:
    return ExportResult(model_path=path, io=read_io_spec(path), info=ModelInfo("toy", expected={}))


def test_fixed_size_images_get_one_feed_per_batch_size(image_model):
    specs = graph_inputs(image_model)
    assert shape_axes(specs) == []
    feeds = dummy_feeds(image_model, batch_sizes=(1, 2, 4), sequence_lengths=(8, 16, 32))
    assert [feed["pixel_values"].shape for feed in feeds] == [(1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)]
    assert [feed_shape(specs, feed) for feed in feeds] == [{"batch": 1}, {"batch": 2}, {"batch": 4}]
    assert read_io_spec(image_model).dynamic_axes["pixel_values"] == {0: "batch"}


def test_explicit_sequence_lengths_for_an_image_model_is_an_error_not_ignored(image_model, tmp_path):
    ctx = RunContext(family="toy", source=None, work_dir=tmp_path, options={"sequence_lengths": (8, 16)})
    with pytest.raises(TfoptError, match=r"sequence_lengths does not apply: .*pixel_values\[batch, 3, 8, 8\]"):
        default_plugin.make_dummy_inputs(ctx, _exported(image_model))
    ctx = RunContext(family="toy", source=None, work_dir=tmp_path, options={"bench_sequence_lengths": (8,)})
    with pytest.raises(TfoptError, match="bench_sequence_lengths does not apply"):
        default_plugin.benchmark(ctx, _exported(image_model), {"ort:raw": image_model})


def test_named_axes_are_sized_by_axis_sizes(audio_model, tmp_path):
    specs = graph_inputs(audio_model)
    assert shape_axes(specs) == ["samples"]
    feeds = dummy_feeds(audio_model, batch_sizes=(1, 2), axis_sizes={"samples": (100, 400)})
    assert [feed_shape(specs, feed) for feed in feeds] == [
        {"batch": 1, "samples": 100}, {"batch": 1, "samples": 400}, {"batch": 2, "samples": 100}, {"batch": 2, "samples": 400},
    ]
    with pytest.raises(TfoptError, match=r"axis_sizes names \['height'\], which the model has not"):
        dummy_feeds(audio_model, axis_sizes={"height": (4,)})
    with pytest.raises(TfoptError, match=r"axis_sizes cannot size the batch axis: the batch sizes are --batch-sizes"):
        dummy_feeds(audio_model, axis_sizes={"batch": (2,), "samples": (100,)})
    ctx = RunContext(family="toy", source=None, work_dir=tmp_path, options={"batch_sizes": [2], "axis_sizes": {"samples": [50, 60]}})
    feeds = default_plugin.make_dummy_inputs(ctx, _exported(audio_model))
    assert [feed["input_values"].shape for feed in feeds] == [(2, 50), (2, 60)]
    ctx.options["axis_sizes"] = "samples=50"
    with pytest.raises(TfoptError, match="axis_sizes must map axis names to sizes"):
        default_plugin.make_dummy_inputs(ctx, _exported(audio_model))


def test_default_verify_and_benchmark_key_by_the_input_shape(image_model, tmp_path):
    ctx = RunContext(family="toy", source=None, work_dir=tmp_path, options={"batch_sizes": [1, 3], "bench_batch_sizes": [2],
                                                                              "bench_repeat": 2, "bench_warmup": 0})
    exported = _exported(image_model)
    feeds = default_plugin.make_dummy_inputs(ctx, exported)
    verified = default_plugin.verify(ctx, exported, image_model, feeds)
    assert verified.passed and [case["batch_size"] for case in verified.cases] == [1, 3]
    assert all("sequence_length" not in case for case in verified.cases)
    bench = default_plugin.benchmark(ctx, exported, {"ort:raw": image_model, "ort:tfopt": image_model})
    assert [(row.engine, row.shape, row.batch_size, row.sequence_length) for row in bench.rows] == [
        ("ort:raw", {"batch": 2}, 2, 0), ("ort:tfopt", {"batch": 2}, 2, 0),
    ]
    rows = [vars(row) for row in bench.rows]
    lines = latency_lines({"rows": rows})
    assert lines[1].split()[:3] == ["batch", "ort:raw", "ort:tfopt"] and lines[3].split()[0] == "2"
    assert _shape_label(rows[0]) == "b2"


def test_rows_of_older_reports_still_read_as_batch_by_sequence():
    old = {"engine": "ort:raw", "batch_size": 1, "sequence_length": 8, "p50_ms": 1.0}
    new = dict(old, engine="ort:tfopt", p50_ms=0.5, shape={"batch": 1, "sequence": 8})
    lines = latency_lines({"rows": [old, new]})
    assert lines[1].split()[:3] == ["batch", "x", "seq"]
    assert lines[3].split() == ["1", "x", "8", "1.000", "0.500", "0.50x"]
    assert _shape_label(old) == _shape_label(new) == "b1 s8"
    assert _shape_label(dict(new, shape={"batch": 1, "samples": 400})) == "b1 samples 400"
