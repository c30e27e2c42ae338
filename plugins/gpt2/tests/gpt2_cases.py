"""Constants and helpers the gpt2 test files share (a unique module name: pytest puts this dir on sys.path)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tfopt.bench import ort_session
from tfopt.results import RunContext

EXPORTERS = ("dynamo", "legacy")
FP32_TOLERANCE = 5e-4


def make_ctx(work_dir, source, **options) -> RunContext:
    return RunContext(family="gpt2", source=source, work_dir=work_dir, options=options)


def ort_outputs(model_path, feed) -> dict[str, np.ndarray]:
    session = ort_session(model_path)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def shifted_output_model(source_path, target_path, output_name: str, offset: float, *, column: int | None = None) -> None:
    """A copy of the model with ``offset`` added to one output (or to one column of its last axis).

    What a subtly wrong fusion looks like: every other output stays bit-identical.
    """
    model = onnx.load(str(source_path))
    inner = output_name + "_before_shift"
    for node in model.graph.node:  # every reader inside the graph keeps the unshifted value
        node.output[:] = [inner if name == output_name else name for name in node.output]
        node.input[:] = [inner if name == output_name else name for name in node.input]
    width = next(o for o in model.graph.output if o.name == output_name).type.tensor_type.shape.dim[-1].dim_value
    if column is None:
        shift = np.array(offset, dtype=np.float32)
    else:
        shift = np.zeros(width, dtype=np.float32)
        shift[column] = offset
    model.graph.initializer.append(numpy_helper.from_array(shift, "shift_" + output_name))
    model.graph.node.append(helper.make_node("Add", [inner, "shift_" + output_name], [output_name]))
    onnx.save(model, str(target_path))
