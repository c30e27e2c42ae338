"""Generic input feeds read off an ONNX graph's declared inputs, for families with no opinion of their own.

Adapters know their vocabulary and build realistic ids; this module only knows the
graph: names, element types and which axes are dynamic. Axis 0 of a dynamic input is
taken as the batch; every other dynamic axis is sized by its name from ``axis_sizes``
(``{"height": (224, 384)}``), else by the sequence length. A model with no dynamic axis
besides the batch (images of one size) gets one feed per batch size. Padding matters: a
fused attention that ignores the mask only shows on rows shorter than the longest, so
``attention_mask`` gets right padding that differs from row to row.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx

from .errors import TfoptError

DEFAULT_BATCH_SIZES = (1, 2, 4)
DEFAULT_SEQUENCE_LENGTHS = (8, 16, 32)
DEFAULT_ID_LIMIT = 100  # ids in [0, 100): inside any real vocabulary (and inside the table when one is found)

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


@dataclass
class GraphInput:
    name: str
    dtype: np.dtype
    dims: list[int | None]  # None = dynamic
    id_limit: int | None = None  # rows of the embedding table this input indexes, if any
    dim_names: list[str | None] = field(default_factory=list)  # symbolic name per axis (dim_param), if any
    # The axis along which the graph concatenates this input with values it computes (a KV
    # cache's past length: Concat(past_key, new_key, axis=-2)), if any.
    concat_axis: int | None = None


# Ops that pass ids through unchanged on their way to a lookup (GPT-2 reshapes input_ids first).
_ID_PRESERVING_OPS = ("Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Slice", "Expand", "Transpose")
# Ops that compute an index from ids: tf2onnx writes a Keras lookup's negative-id wrap
# (``ids + (ids < 0) * rows``) as Less, Cast, Mul and Add before the Gather.
_ID_WRAPPING_OPS = ("Add", "Sub", "Mul", "Where", "Less", "Greater", "Max", "Min", "Mod", "Abs")
# com.microsoft.EmbedLayerNormalization: (ids input index, table input index) pairs.
_EMBED_LOOKUPS = ((0, 2), (1, 4))


def _lookup_table_rows(graph: onnx.GraphProto) -> dict[str, int]:
    """Input name -> rows of the constant table a Gather (or a fused EmbedLayerNormalization)
    indexes with it, through Casts and reshapes.

    Ids must stay inside the vocabulary (and token types inside the type vocabulary),
    or ONNX Runtime refuses the lookup.
    """
    rows_of = {init.name: init.dims[0] for init in graph.initializer if len(init.dims) == 2}
    source = {value.name: value.name for value in graph.input}
    for node in graph.node:  # nodes are topologically sorted
        if node.op_type in _ID_PRESERVING_OPS and node.input and node.input[0] in source:
            source[node.output[0]] = source[node.input[0]]
        elif node.op_type in _ID_WRAPPING_OPS and node.output and any(name in source for name in node.input):
            source[node.output[0]] = next(source[name] for name in node.input if name in source)
    limits: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx"):
            lookups = [(1, 0)]
        elif node.op_type == "EmbedLayerNormalization":
            lookups = list(_EMBED_LOOKUPS)
        else:
            continue
        for ids, table in lookups:
            if len(node.input) > max(ids, table) and node.input[table] in rows_of and node.input[ids] in source:
                name, rows = source[node.input[ids]], rows_of[node.input[table]]
                limits[name] = min(limits.get(name, rows), rows)
    return limits


# Ops that keep every axis where it was (a cache may be cast, sliced or split before its Concat).
_AXIS_KEEPING_OPS = ("Identity", "Cast", "Slice", "Split", "Neg", "Relu", "Clip")


def _constant_ints(graph: onnx.GraphProto, name: str) -> list[int] | None:
    for init in graph.initializer:
        if init.name == name:
            return [int(v) for v in onnx.numpy_helper.to_array(init).ravel()]
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return [int(v) for v in onnx.numpy_helper.to_array(node.attribute[0].t).ravel()] if node.attribute[0].type == onnx.AttributeProto.TENSOR else None
    return None


def _axis_before(node: onnx.NodeProto, axis: int, graph: onnx.GraphProto) -> int | None:
    """The axis of ``node``'s first input that becomes ``axis`` of its output, if the op says so.

    Negative axes count from the end: a Gather, Squeeze or Unsqueeze at the front (ONNX
    Runtime's stacked past, ``past_0[0]``) leaves them where they are.
    """
    attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    if node.op_type in _AXIS_KEEPING_OPS:
        return axis
    if node.op_type == "Transpose" and "perm" in attrs:
        perm = list(attrs["perm"])
        return perm[axis] if -len(perm) <= axis < len(perm) else None
    if node.op_type == "Gather":
        front = attrs.get("axis", 0)
        return axis if axis < 0 and front >= 0 else None
    if node.op_type in ("Squeeze", "Unsqueeze"):
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1:
            axes = _constant_ints(graph, node.input[1])
        return axis if axis < 0 and axes is not None and all(a >= 0 for a in axes) else None
    return None


def _concatenated_axes(graph: onnx.GraphProto) -> dict[str, int]:
    """Input name -> the axis along which a Concat joins it to something (found back through
    casts, slices, splits, transposes and front gathers): a KV cache's past-length axis.

    Negative axes count from the input's last one: ``Concat(past_key, new_key, axis=-2)``.
    """
    inputs = {value.name: len(value.type.tensor_type.shape.dim) for value in graph.input}
    for init in graph.initializer:
        inputs.pop(init.name, None)
    producer = {out: node for node in graph.node for out in node.output}
    found: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        axis = next((attr.i for attr in node.attribute if attr.name == "axis"), None)
        for operand in node.input:
            current, at, steps = operand, axis, 0
            while at is not None and current not in inputs and current in producer and steps < 16:
                before = producer[current]
                at, current, steps = _axis_before(before, at, graph), before.input[0] if before.input else "", steps + 1
            if at is None or current not in inputs:
                continue
            rank = inputs[current]
            if rank and -rank <= at < rank and at % rank > 0:  # axis 0 is the batch: a concatenation of rows is no cache
                found.setdefault(current, at % rank)
    return found


# A file written less than this long ago is read again each time: a rewrite within the file
# system's timestamp granularity (2 s on FAT, a clock tick on ext4) could keep its mtime and size.
_SETTLED_NS = 2_000_000_000


def graph_inputs(model_path: str | Path) -> list[GraphInput]:
    """The model's real inputs (initializers listed as inputs by old exporters are skipped).

    Reads the graph only: external weights are not loaded. One run asks for the exported
    file's inputs in several stages (validation, dummy inputs, verify, benchmark, profile):
    a file unchanged since it was last read (same inode, size and mtime) is not parsed again.
    """
    path = str(model_path)
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    if stat is None or time.time_ns() - stat.st_mtime_ns < _SETTLED_NS:
        specs = _parsed_inputs.__wrapped__(path)
    else:
        specs = _parsed_inputs(path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return [replace(spec, dims=list(spec.dims), dim_names=list(spec.dim_names)) for spec in specs]


@functools.lru_cache(maxsize=16)
def _parsed_inputs(path: str, *identity: int) -> tuple[GraphInput, ...]:
    """:func:`graph_inputs` of a file; ``identity`` (inode, size, mtime) only keys the cache."""
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise TfoptError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    from .graph.input_checks import input_shapes_from_graph, shapeless_inputs

    initializers = {init.name for init in model.graph.initializer}
    limits = _lookup_table_rows(model.graph)
    concatenated = _concatenated_axes(model.graph)
    implied = input_shapes_from_graph(model)  # for inputs that declare no shape at all
    for value in shapeless_inputs(model.graph):
        if value.name not in implied:
            raise TfoptError(f"{Path(path).name}: input {value.name!r} declares no shape and the graph implies none; declare its shape")
    found = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if value.name in implied:
            dims = [dim if isinstance(dim, int) else None for dim in implied[value.name]]
            names = [dim if isinstance(dim, str) else None for dim in implied[value.name]]
        else:
            dims = [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None for dim in tensor_type.shape.dim]
            names = [dim.dim_param or None for dim in tensor_type.shape.dim]
        found.append(GraphInput(value.name, dtype, dims, limits.get(value.name), names, concatenated.get(value.name)))
    return tuple(found)


def int_tuple(value: Any, name: str) -> tuple[int, ...]:
    """Accept 4, "1,2", [1, 2] or (1, 2) from options; positive ints only."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, Iterable):
        parts = list(value)
    else:
        parts = [value]
    try:
        numbers = tuple(int(part) for part in parts)
    except (TypeError, ValueError):
        raise TfoptError(f"{name} must be positive integers, got {value!r}") from None
    if not numbers or any(number <= 0 for number in numbers):
        raise TfoptError(f"{name} must be positive integers, got {value!r}")
    return numbers


def axis_sizes_from(value: Any, source: str) -> dict[str, tuple[int, ...]] | None:
    """Sizes per named axis, ``{"samples": (400, 800)}``, checked; None when ``value`` is None or empty.

    ``source`` is where the value came from, for the one-line error: ``"ModelInfo.axis_sizes"``,
    or the option (``axis_sizes``, ``bench_axis_sizes``), given on the command line as JSON.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        example = '{"samples": [400, 800]}'
        if not source.startswith("ModelInfo."):
            example = f"--option '{source}={example}'"
        raise TfoptError(f"{source} must map axis names to sizes, e.g. {example}, got {value!r}")
    return {str(name): int_tuple(sizes, f"{source}[{name}]") for name, sizes in value.items()} or None


def lengths_within(value: Any, option: str, maximum: int, model_name: str) -> tuple[int, ...]:
    """The lengths option as ints, if the model's position table covers them all (a one-line error, not an index error)."""
    lengths = int_tuple(value, option)
    too_long = [length for length in lengths if length > maximum]
    if too_long:
        raise TfoptError(f"sequence length {too_long[0]} exceeds {model_name}'s maximum of {maximum}")
    return lengths


def valid_lengths(batch_size: int, sequence_length: int) -> np.ndarray:
    """Row i keeps ``S - i*S//B`` tokens: row 0 full, later rows shorter, never empty."""
    rows = np.arange(batch_size)
    return sequence_length - (rows * sequence_length) // batch_size


def _shape(
    spec: GraphInput, batch_size: int, sequence_length: int, dim_sizes: dict[str, int], axes: dict[int, int] | None = None
) -> tuple[int, ...]:
    dims = []
    for axis, dim in enumerate(spec.dims):
        name = spec.dim_names[axis] if axis < len(spec.dim_names) else None
        if dim is not None:
            dims.append(dim)
        elif axes and axis in axes:
            dims.append(axes[axis])
        elif name in dim_sizes:
            dims.append(dim_sizes[name])
        else:
            dims.append(batch_size if axis == 0 else sequence_length)
    return tuple(dims)


def feed_for(
    specs: list[GraphInput],
    batch_size: int,
    sequence_length: int,
    *,
    rng: np.random.Generator,
    id_limit: int = DEFAULT_ID_LIMIT,
    padded: bool = True,
    dim_sizes: dict[str, int] | None = None,
    input_axes: dict[str, dict[int, int]] | None = None,
) -> dict[str, np.ndarray]:
    """One feed for every input; ``padded=False`` gives full-length rows (benchmarks).

    ``dim_sizes`` sizes symbolic dims by name (a past length, a total = past + sequence);
    ``input_axes`` sizes axes of named inputs whatever their symbols (``{"attention_mask":
    {1: 10}}``: each input of a dynamo export has symbols of its own); other dynamic axes
    are the batch (axis 0) or the sequence. Position ids count up within the table they index.
    """
    feed = {}
    for spec in specs:
        shape = _shape(spec, batch_size, sequence_length, dim_sizes or {}, (input_axes or {}).get(spec.name))
        is_mask = "mask" in spec.name
        if is_mask and len(shape) == 2:
            mask_lengths = valid_lengths(*shape) if padded else np.full(shape[0], shape[1])
            value = np.arange(shape[1])[None, :] < mask_lengths[:, None]
        elif spec.dtype.kind == "b":
            value = np.ones(shape, dtype=bool)
        elif spec.name == "token_type_ids" and len(shape) == 2:  # second half of the text is segment 1
            lengths = valid_lengths(*shape) if padded else np.full(shape[0], shape[1])
            second_half = np.arange(shape[1])[None, :] >= (lengths[:, None] + 1) // 2
            value = second_half if (spec.id_limit or 2) > 1 else np.zeros(shape)
        elif spec.name == "position_ids":
            value = np.broadcast_to(np.arange(shape[-1]) % (spec.id_limit or shape[-1] or 1), shape)
        elif spec.dtype.kind in "iu":
            value = rng.integers(0, min(id_limit, spec.id_limit or id_limit), size=shape)
        else:
            value = rng.standard_normal(shape)
        feed[spec.name] = np.ascontiguousarray(value).astype(spec.dtype)
    return feed


def shape_axes(specs: list[GraphInput]) -> list[str]:
    """Names of the dynamic axes besides the batch, in input order (unnamed ones are "sequence")."""
    names: dict[str, None] = {}
    for spec in specs:
        for axis, dim in enumerate(spec.dims):
            if axis > 0 and dim is None:
                names[(spec.dim_names[axis] if axis < len(spec.dim_names) else None) or "sequence"] = None
    return list(names)


def feed_shape(specs: list[GraphInput], feed: dict[str, np.ndarray]) -> dict[str, int]:
    """The shape a feed was made at, by axis name: ``{"batch": 2, "sequence": 16}``, ``{"batch": 4}``.

    What benchmark rows (``LatencyRow.shape``) and verification cases are keyed by.
    """
    shape: dict[str, int] = {}
    for spec in specs:
        value = feed.get(spec.name)
        if value is None:
            continue
        for axis, dim in enumerate(spec.dims):
            if dim is None and axis < value.ndim:
                name = "batch" if axis == 0 else (spec.dim_names[axis] if axis < len(spec.dim_names) else None) or "sequence"
                shape.setdefault(name, int(value.shape[axis]))
    return shape


def dummy_feeds(
    model_path: str | Path,
    *,
    batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
    sequence_lengths: Iterable[int] = DEFAULT_SEQUENCE_LENGTHS,
    id_limit: int = DEFAULT_ID_LIMIT,
    padded: bool = True,
    seed: int = 0,
    axis_sizes: dict[str, Iterable[int]] | None = None,
) -> list[dict[str, np.ndarray]]:
    """One feed per point of the grid, reproducible for a seed.

    The grid is batch sizes x sequence lengths x the sizes ``axis_sizes`` gives named axes.
    The sequence lengths size every other dynamic axis but the batch; when there is none
    (a fixed image size) they do not apply and the grid is the batch sizes alone.
    """
    specs = graph_inputs(model_path)
    rng = np.random.default_rng(seed)
    named = {name: tuple(sizes) for name, sizes in (axis_sizes or {}).items()}
    if "batch" in named:
        raise TfoptError("axis_sizes cannot size the batch axis: the batch sizes are --batch-sizes (or the batch_sizes option)")
    unknown = set(named) - set(shape_axes(specs))
    if unknown:
        raise TfoptError(
            f"axis_sizes names {sorted(unknown)}, which the model has not; its dynamic axes: batch, {', '.join(shape_axes(specs)) or 'no other'}"
        )
    lengths = tuple(sequence_lengths) if set(shape_axes(specs)) - set(named) else tuple(sequence_lengths)[:1]
    grid = list(itertools.product(*named.values())) or [()]
    return [
        feed_for(specs, batch_size, sequence_length, rng=rng, id_limit=id_limit, padded=padded, dim_sizes=dict(zip(named, sizes)))
        for batch_size in batch_sizes
        for sequence_length in lengths
        for sizes in grid
    ]


def check_sequence_option(specs: list[GraphInput], value: Any, option: str, *, sized: Iterable[str] | None = None) -> None:
    """An explicit sequence-length option that would size nothing is a one-line error, not ignored.

    It sizes the dynamic axes besides the batch that ``sized`` (the axes ``axis_sizes``
    names: ``ModelInfo.axis_sizes`` and ``--option axis_sizes``) leaves; with none left,
    it does not apply.
    """
    if value is None:
        return
    axes = shape_axes(specs)
    if not axes:
        inputs = ", ".join(f"{spec.name}[{', '.join(str(d) if d is not None else (spec.dim_names[i] or '?') for i, d in enumerate(spec.dims))}]" for spec in specs)
        raise TfoptError(f"{option} does not apply: the model has no dynamic axis besides the batch ({inputs})")
    named = set(sized or ())
    if not set(axes) - named:
        example = ", ".join(f'"{axis}": [...]' for axis in axes)
        raise TfoptError(
            f"{option} does not apply: the model's axes besides the batch ({', '.join(axes)}) are sized by name; "
            f"size them with --option 'axis_sizes={{{example}}}'"
        )


def session_feed(session, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs ``session`` declares, cast to its types (a fused model may take int32 ids)."""
    prepared = {}
    for spec in session.get_inputs():
        if spec.name not in feed:
            raise TfoptError(f"the model wants an input {spec.name!r} that the dummy inputs do not have")
        dtype = _ORT_TYPES.get(spec.type)
        value = feed[spec.name]
        prepared[spec.name] = value.astype(dtype) if dtype is not None and value.dtype != dtype else value
    return prepared


def sizing_hint(specs: list[GraphInput], axis_option: str = "axis_sizes") -> str:
    """How a user sizes the generated inputs of a model with these inputs (for one-line errors)."""
    axes = shape_axes(specs)
    named = [axis for axis in axes if axis != "sequence"]
    if not axes:
        return "the model takes no dynamic axis besides the batch; --batch-sizes sizes it"
    example = ", ".join(f'"{axis}": [...]' for axis in (named or axes))
    ways = f"--option '{axis_option}={{" + example + "}'"
    return f"size its axes ({', '.join(axes)}) with " + (f"--sequence-lengths or {ways}" if "sequence" in axes else ways)


def run_generated(
    session, feed: dict[str, np.ndarray], output_names: list[str] | None = None, *,
    specs: list[GraphInput] | None = None, axis_option: str = "axis_sizes",
) -> list:
    """``session.run`` on a generated feed; a feed the model cannot take is a one-line error that says how to size it."""
    try:
        return session.run(output_names, session_feed(session, feed))
    except TfoptError:
        raise
    except Exception as exc:  # ONNX Runtime's errors have no common base class
        from .errors import first_line

        shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in feed.items())
        hint = sizing_hint(specs, axis_option) if specs is not None else f"size its axes with --sequence-lengths or --option '{axis_option}={{...}}'"
        raise TfoptError(f"ONNX Runtime cannot run the model on the generated inputs ({shapes}): {first_line(exc)}; {hint}") from None


def describe_feeds(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, dict[str, Any]]]:
    """Shapes and types of each feed: what the report keeps instead of the arrays."""
    return [
        {name: {"shape": list(value.shape), "dtype": str(value.dtype)} for name, value in feed.items()}
        for feed in feeds
    ]
