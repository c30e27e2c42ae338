"""load_model refuses, in one line, what would otherwise fail deep in a pass; it normalizes what ONNX allows."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tfopt.errors import TfoptError
from tfopt.graph.io import load_model, read_io_spec


def _model(opset: int = 17, **graph_changes) -> onnx.ModelProto:
    """y = Relu(x @ w + b), w 4x4 and b 4: small enough to read, big enough for external data."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
        helper.make_node("Add", ["xw", "b"], ["xwb"], name="add"),
        helper.make_node("Relu", ["xwb"], ["y"], name="relu"),
    ]
    initializers = [
        numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w"),
        numpy_helper.from_array(np.arange(4, dtype=np.float32), "b"),
    ]
    graph = helper.make_graph(
        graph_changes.get("nodes", nodes), "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=graph_changes.get("initializers", initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _save(model: onnx.ModelProto, path, *, external: bool = False):
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    else:
        path.write_bytes(model.SerializeToString())
    return path


def _refused(path) -> str:
    with pytest.raises(TfoptError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def _set_location(path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def test_external_data_loads_lazily_and_reads_the_right_bytes(tmp_path):
    path = _save(_model(), tmp_path / "m.onnx", external=True)
    model = load_model(path)
    assert np.array_equal(model.graph.initializers["w"].const_value.numpy(), np.arange(16).reshape(4, 4))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda data: data.unlink(), "is missing beside the model"),
        (lambda data: data.write_bytes(data.read_bytes()[:40]), "too short"),
        (lambda data: data.write_bytes(b""), "is empty"),
    ],
    ids=["missing", "short", "empty"],
)
def test_damaged_external_data_is_refused(tmp_path, damage, expected):
    path = _save(_model(), tmp_path / "m.onnx", external=True)
    damage(tmp_path / "m.onnx.data")
    assert expected in _refused(path)


def test_external_data_without_length_must_still_hold_the_tensor(tmp_path):
    path = _save(_model(), tmp_path / "m.onnx", external=True)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        kept = [(entry.key, entry.value) for entry in tensor.external_data if entry.key != "length"]
        del tensor.external_data[:]
        for key, value in kept:
            tensor.external_data.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:-4])  # the last tensor (b) loses one float
    assert "holds 12 bytes" in _refused(path)


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, where):
    folder = tmp_path / "model"
    folder.mkdir()
    path = _save(_model(), folder / "m.onnx", external=True)
    outside = tmp_path / "outside.data"
    os.replace(folder / "m.onnx.data", outside)
    _set_location(path, "../outside.data" if where == "parent" else str(outside))
    assert "outside the model's folder" in _refused(path)


def test_external_data_symlinked_out_of_the_folder_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path = _save(_model(), folder / "m.onnx", external=True)
    os.replace(folder / "m.onnx.data", tmp_path / "blob")
    (folder / "m.onnx.data").symlink_to(tmp_path / "blob")
    assert "is a link out of the model's folder" in _refused(path)


def test_external_data_length_zero_means_not_given(tmp_path):
    path = _save(_model(), tmp_path / "m.onnx", external=True)
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "length":
            entry.value = "0"
    path.write_bytes(model.SerializeToString())
    assert np.array_equal(load_model(path).graph.initializers["w"].const_value.numpy(), np.arange(16).reshape(4, 4))


def test_external_data_offset_past_the_end_is_refused(tmp_path):
    path = _save(_model(), tmp_path / "m.onnx", external=True)
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[1].external_data:
        if entry.key == "offset":
            entry.value = "4096"
    path.write_bytes(model.SerializeToString())
    assert "past the end" in _refused(path)


def test_external_location_that_is_a_directory_is_refused(tmp_path):
    path = _save(_model(), tmp_path / "m.onnx", external=True)
    (tmp_path / "sub").mkdir()
    _set_location(path, "sub")
    assert "is not a file" in _refused(path)


def test_a_cycle_is_refused(tmp_path):
    model = _model()
    model.graph.node[0].input[0] = "y"  # MatMul reads Relu's output: matmul -> add -> relu -> matmul
    assert "cycle" in _refused(_save(model, tmp_path / "m.onnx"))


def test_a_node_reading_its_own_output_is_refused(tmp_path):
    model = _model()
    model.graph.node[1].input[1] = "xwb"
    assert "reads its own output" in _refused(_save(model, tmp_path / "m.onnx"))


def test_nodes_out_of_order_are_sorted(tmp_path):
    model = _model()
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    loaded = load_model(_save(model, tmp_path / "m.onnx"))
    assert [node.op_type for node in loaded.graph] == ["MatMul", "Add", "Relu"]


@pytest.mark.parametrize(
    "attribute, expected",
    [
        (helper.make_attribute("axis", 1.5), "Mismatched attribute type"),
        (onnx.AttributeProto(name="axis", type=onnx.AttributeProto.FLOAT, i=1), "mismatch"),
    ],
    ids=["float-for-int", "tag-contradicts-field"],
)
def test_attribute_of_the_wrong_type_is_refused(tmp_path, attribute, expected):
    model = _model()
    model.graph.node.append(helper.make_node("Softmax", ["y"], ["z"], name="softmax"))
    model.graph.node[-1].attribute.append(attribute)
    model.graph.output[0].name = "z"
    message = _refused(_save(model, tmp_path / "m.onnx"))
    assert "'softmax' (Softmax)" in message and expected in message


def test_attribute_tagged_graph_without_a_graph_is_refused(tmp_path):
    model = _model()
    model.graph.node.append(helper.make_node("Softmax", ["y"], ["z"], name="softmax", axis=-1))
    model.graph.node[-1].attribute[0].type = onnx.AttributeProto.GRAPH
    model.graph.output[0].name = "z"
    assert "tagged GRAPH but holds no graph" in _refused(_save(model, tmp_path / "m.onnx"))


@pytest.mark.parametrize("to", [0, 99, -3])
def test_cast_to_a_type_that_does_not_exist_is_refused(tmp_path, to):
    model = _model()
    model.graph.node.append(helper.make_node("Cast", ["y"], ["z"], name="cast", to=to))
    model.graph.output[0].name = "z"
    assert f"'to' = {to} is not an ONNX data type" in _refused(_save(model, tmp_path / "m.onnx"))


def test_graph_without_outputs_or_nodes_is_refused(tmp_path):
    model = _model()
    del model.graph.output[:]
    assert "no outputs" in _refused(_save(model, tmp_path / "a.onnx"))
    assert "no nodes" in _refused(_save(_model(nodes=[]), tmp_path / "b.onnx"))


def test_two_definitions_of_a_name_are_refused_unless_onnx_runtime_reads_one(tmp_path):
    model = _model()
    model.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "b"))
    loaded = load_model(_save(model, tmp_path / "twice.onnx"))  # ONNX Runtime reads the last small one: so does the repair
    assert np.array_equal(loaded.graph.initializers["b"].const_value.numpy(), np.ones(4, np.float32))
    model = _model()
    model.graph.initializer.append(numpy_helper.from_array(np.ones((4, 4), np.float32), "w"))
    loaded = load_model(_save(model, tmp_path / "big.onnx"))  # 64 bytes each: the last
    assert np.array_equal(loaded.graph.initializers["w"].const_value.numpy(), np.ones((4, 4), np.float32))
    model = _model()
    model.graph.initializer.append(numpy_helper.from_array(np.ones((4, 40), np.float32), "w"))  # 64 and 640 bytes
    assert "initializer 'w' is defined twice, in ways ONNX Runtime reads differently" in _refused(_save(model, tmp_path / "mixed.onnx"))
    model = _model()
    model.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "b"))
    model.graph.input.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [4]))  # and an input: ambiguous
    assert "initializer 'b' is defined twice and is a graph input too" in _refused(_save(model, tmp_path / "a.onnx"))
    model = _model()
    model.graph.node[1].output[0] = "xw"  # Add also defines MatMul's output
    assert "'xw' is defined twice" in _refused(_save(model, tmp_path / "b.onnx"))


def test_undefined_values_are_refused(tmp_path):
    model = _model()
    model.graph.node[1].input[1] = "nowhere"
    assert "reads 'nowhere', which nothing in the graph defines" in _refused(_save(model, tmp_path / "a.onnx"))
    model = _model()
    model.graph.output[0].name = "nowhere"
    assert "'nowhere' is not computed" in _refused(_save(model, tmp_path / "b.onnx"))


def test_tensor_data_that_does_not_fit_its_shape_or_type_is_refused(tmp_path):
    model = _model()
    model.graph.initializer[0].dims[:] = [4, 5]
    assert "holds 64 bytes" in _refused(_save(model, tmp_path / "a.onnx"))
    model = _model()
    model.graph.initializer[1].data_type = 77
    assert "not an ONNX tensor type" in _refused(_save(model, tmp_path / "b.onnx"))
    model = _model()
    model.graph.initializer[1].data_type = TensorProto.STRING
    assert "STRING" in _refused(_save(model, tmp_path / "c.onnx"))


def test_unknown_opsets_are_refused_ops_onnx_lacks_a_schema_for_are_not(tmp_path):
    model = _model(opset=11)  # LayerNormalization is ONNX's from opset 17 on, ONNX Runtime's from 1
    model.graph.node[2].op_type = "LayerNormalization"
    model.graph.node[2].input[:] = ["xwb", "b"]
    assert len(load_model(_save(model, tmp_path / "a.onnx")).graph) == 3
    assert "opset 99" in _refused(_save(_model(opset=99), tmp_path / "b.onnx"))
    model = _model()
    del model.opset_import[:]
    assert "no version of the standard ONNX operator set" in _refused(_save(model, tmp_path / "c.onnx"))


def test_default_domain_spelled_ai_onnx_is_the_default_domain(tmp_path):
    model = _model()
    model.opset_import[0].domain = "ai.onnx"
    for node in model.graph.node:
        node.domain = "ai.onnx"
    loaded = load_model(_save(model, tmp_path / "m.onnx"))
    assert loaded.opset_imports == {"": 17}
    assert {node.domain for node in loaded.graph} == {""}


def test_negative_dims_become_unknown(tmp_path):
    model = _model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    loaded = load_model(_save(model, tmp_path / "m.onnx"))
    dim = loaded.graph.inputs[0].shape[0]
    assert not isinstance(dim, int)


def test_input_path_problems(tmp_path):
    loop = tmp_path / "loop.onnx"
    loop.symlink_to(loop.name)
    assert "symlink loop" in _refused(loop)
    dangling = tmp_path / "dangling.onnx"
    dangling.symlink_to("gone.onnx")
    assert "symlink to a missing file" in _refused(dangling)
    assert "is a directory" in _refused(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert "empty file" in _refused(tmp_path / "empty.onnx")


def test_read_io_spec_refuses_an_input_without_a_numpy_type(tmp_path):
    model = _model()
    model.graph.input[0].type.tensor_type.elem_type = 77
    with pytest.raises(TfoptError, match="no numpy element type"):
        read_io_spec(_save(model, tmp_path / "m.onnx"))


def test_text_that_is_not_utf8_is_decoded_where_it_only_describes_and_refused_in_names(tmp_path):
    """A flipped byte in a name: protobuf hands out bytes, onnx-ir could not write the model back (SerdeError)."""
    model = _model()
    model.producer_name = "PRODX"
    model.graph.node[0].name = "NODEA"
    data = model.SerializeToString().replace(b"PRODX", b"PR\xcfDX").replace(b"NODEA", b"NO\xffEA")
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    loaded = load_model(path)
    assert loaded.producer_name == "PR\ufffdDX" and any(node.name == "NO\ufffdEA" for node in loaded.graph)
    path.write_bytes(_model().SerializeToString().replace(b"Relu", b"Re\xffu"))
    assert "a node's op_type is not UTF-8 text" in _refused(path)
    path.write_bytes(_model().SerializeToString().replace(b"batch", b"ba\xfech"))  # ONNX Runtime's Python API fails on it
    assert "a graph input's or output's dim's dim_param is not UTF-8 text" in _refused(path)
