"""Self-attention of encoder models -> ORT's ``Attention`` contrib op (packed QKV GEMM).

One rule covers what today's exporters write for BERT-family self-attention:

- Q, K, V: ``Transpose(Reshape(MatMul(x, W) + b), [0, 2, 1, 3])``;
- K^T three ways: ``Transpose(k, [0, 2, 3, 1])`` (eager, legacy sdpa), a 3-D
  reshape/transpose/reshape round trip (dynamo sdpa), or two Transposes;
- the projections with a bias Add or without one (Keras EinsumDense with zero Q/K/V
  bias, which TF folds away);
- the 1/sqrt(head_size) scale on Q and K separately (sdpa), on Q before its head
  transpose (Keras), or on the scores (eager), as Mul or Div;
- the mask as an additive tensor (``Add``), absent, or both; or TF's ``SelectV2``
  (``where(mask, scores, -1e9)``, lowered to ``Cast(m) * s + Cast(!m) * -1e9``), with
  Keras' ``where(mask, probs, 0)`` after Softmax;
- sdpa's NaN guard after Softmax (``Where(IsNaN(p), 0, p)``).

The fused op depends on the target: on CPU, three MatMuls + ``MultiHeadAttention``
(measured 5-6% faster per layer than ``Attention`` at bert-base size, s=128 and 512,
ORT 1.32); on CUDA, ``Attention`` with one packed QKV GEMM, as ORT's own tool does.

The mask subgraph (transformers 5 builds it with GatherND/And/Where) is replaced
by the raw 2-D ``attention_mask`` input, which ``Attention`` accepts as
``mask_index`` for any padding side; the check proves the additive mask is
computed from that input's data alone.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import MS_DOMAIN, constant_array, int32_of, scalar, shape_tail, source_graph_inputs, traced_graph_input
from .causal_mask import ShapeOf, causal_mask_problem
from ...errors import TfoptError
from .padding_mask import key_padding_problem
from .reshapes import int64_constant, rank_of, same_dim, target_entries, without_casts

_SCALE_TAGS = ["Mul", "Div", "None"]


def scaled(op, value, factor, tag):
    return pattern.OrValue([op.Mul(value, factor), op.Div(value, factor), value], tag_var=tag, tag_values=_SCALE_TAGS)


def scale_of(tag: str, factor) -> float | None:
    if tag == "None":
        return 1.0
    number = scalar(factor)
    if number is None or number == 0:
        return None
    return number if tag == "Mul" else 1.0 / number


def masked_softmax(op, scores, mask, zero):
    """Softmax over the scores with the mask forms exporters write ("masked" tags which, "guard" what follows).

    TF's ``SelectV2`` keeps the scores where the boolean ``condition`` holds and writes a
    large negative ``fill`` elsewhere; Keras selects the probabilities again after Softmax
    (``cleared`` = 0), which only changes rows with every key masked: ORT's kernels do not
    zero those, as for the other exporters' masks.
    """
    condition = pattern.Var("condition")

    def select(kept, dropped):
        return op.Add(op.Mul(op.Cast(condition), kept), op.Mul(op.Cast(op.Not(condition)), dropped))

    added = pattern.OrValue([op.Add(scores, mask), op.Add(mask, scores)])  # either operand order
    scores = pattern.OrValue(
        [added, select(scores, pattern.Var("fill")), scores],
        tag_var="masked",
        tag_values=["add", "select", "none"],
    )
    probs = op.Softmax(scores, _outputs=["probs"])
    return pattern.OrValue(
        [op.Where(op.IsNaN(probs), zero, probs), select(probs, pattern.Var("cleared")), probs],
        tag_var="guard",
        tag_values=["nan", "select", "none"],
    )


def _is_key_mask(condition: ir.Value, mask_input: ir.Value, graph: ir.Graph) -> bool:
    """``condition`` is ``mask_input != 0`` (Casts) laid out as (batch, 1, 1, keys) (Unsqueeze/Reshape only).

    A select is exact to replace by ``mask_index`` only if it keeps the scores where the
    raw mask is non-zero; an inverted or per-query condition must not fuse.
    """
    if traced_graph_input(condition, graph) is not mask_input:
        return False
    shape = condition.shape
    return shape is None or (shape.rank() == 4 and shape[1] == 1 and shape[2] == 1)


_PASS_VALUES = ("Expand", "Unsqueeze", "Squeeze", "Reshape", "Identity", "Flatten")


def _lower_bound(value: ir.Value | None, depth: int = 0) -> float | None:
    """A number every element of ``value`` is at least, when the graph proves one (``Range`` upwards, constants)."""
    if value is None or depth > 8:
        return None
    array = constant_array(value)
    if array is not None:
        return float(array.min()) if array.size and array.dtype != np.bool_ else None
    node = value.producer()
    if node is None or node.domain != "":
        return None
    source = node.inputs[0].dtype if node.inputs and node.inputs[0] is not None else None
    integer_cast = node.op_type == "Cast" and source is not None and source.is_integer()
    if node.op_type in _PASS_VALUES or (integer_cast and node.attributes.get_int("to", 0) in (ir.DataType.INT32, ir.DataType.INT64)):
        return _lower_bound(node.inputs[0], depth + 1)
    if node.op_type == "Range":
        start, delta = scalar(node.inputs[0]), scalar(node.inputs[2])
        return start if start is not None and delta is not None and delta > 0 else None
    return None


def _all_true(value: ir.Value | None, depth: int = 0) -> bool:
    """Every element of ``value`` is provably non-zero (True), whatever the inputs."""
    if value is None or depth > 12:
        return False
    array = constant_array(value)
    if array is not None:
        return bool(array.size) and bool(np.all(array != 0))
    node = value.producer()
    if node is None or node.domain != "":
        return False
    if node.op_type in _PASS_VALUES:
        return _all_true(node.inputs[0], depth + 1)
    if node.op_type == "Cast":
        source = node.inputs[0].dtype
        to = node.attributes.get_int("to", 0)
        if to == ir.DataType.BOOL or source == ir.DataType.BOOL:  # non-zero stays non-zero
            return _all_true(node.inputs[0], depth + 1)
        return False
    if node.op_type == "And":
        return all(_all_true(v, depth + 1) for v in node.inputs)
    if node.op_type == "Or":
        return any(_all_true(v, depth + 1) for v in node.inputs)
    if node.op_type in ("GreaterOrEqual", "Greater", "LessOrEqual", "Less"):
        big, small = node.inputs if node.op_type.startswith("Greater") else node.inputs[::-1]
        floor, ceiling = _lower_bound(big), scalar(small)
        if floor is None or ceiling is None:
            return False
        return floor >= ceiling if node.op_type.endswith("OrEqual") else floor > ceiling
    return False


def _is_zero_mask(mask: ir.Value | None, score_dims: list[list]) -> bool:
    """``mask`` adds zero everywhere and does not broadcast the scores to a larger shape.

    torch's dynamo export of an encoder called without a mask still writes one:
    ``Where(Expand(Range(0, S) >= 0), 0, -3.4e38)``, or ``Where(Expand(True), ...)``.
    ``score_dims`` holds, per axis of the scores, the dims known to be that axis' size; a
    mask dim that is neither 1 nor one of them, and provably differs, could broadcast.
    """
    if mask is None:
        return False
    array = constant_array(mask)
    node = mask.producer()
    if array is not None:
        zero = bool(np.all(array == 0))
    elif node is not None and node.op_type == "Where" and node.domain == "":
        zero = _all_true(node.inputs[0]) and constant_array(node.inputs[1]) is not None and bool(np.all(constant_array(node.inputs[1]) == 0))
    else:
        zero = False
    if not zero or (mask.shape is not None and mask.shape.rank() > len(score_dims)):
        return False
    for dim, known in zip(reversed(list(mask.shape or ())), reversed(score_dims)):
        if dim == 1 or any(same_dim(dim, other) for other in known):
            continue
        if isinstance(dim, int) or (getattr(dim, "value", None) and any(isinstance(o, int) or getattr(o, "value", None) for o in known)):
            return False  # provably another size: adding it would broadcast the scores
    return True


def _score_dims(probs: ir.Value, mask: ir.Value | None, query: ir.Value, value: ir.Value) -> list[list]:
    """Per axis of the (batch, heads, queries, keys) scores, the dims that are its size: the scores' own, Q's, V's."""
    dims: list[list] = [[], [], [], []]
    node = probs.producer().inputs[0].producer()
    scores = None
    if mask is not None and node is not None and node.op_type == "Add" and len(node.inputs) == 2:
        scores = node.inputs[1] if node.inputs[0] is mask else node.inputs[0]
    for source, axes in ((scores, (0, 1, 2, 3)), (query, (0, 1, 2, None)), (value, (0, 1, None, 2))):
        if source is None or source.shape is None or source.shape.rank() != 4:
            continue
        for axis, taken in enumerate(axes):
            if taken is not None:
                dims[axis].append(source.shape[taken])
    return dims


def _is_flat(value: ir.Value) -> bool:
    """``value`` is 2-D (rows = batch x sequence): known rank 2, or made by a 2-D Reshape/Flatten."""
    if rank_of(value) is not None:
        return rank_of(value) == 2
    node = value.producer()
    if node is None or node.domain != "":
        return False
    if node.op_type == "Flatten":
        return True
    target = constant_array(node.inputs[1]) if node.op_type == "Reshape" and len(node.inputs) > 1 else None
    return target is not None and target.size == 2


class SelfAttention(pattern.RewriteRuleClassBase):
    causal_only_mask = False  # a mask read from no graph input: only the causal rule can prove what it is

    def __init__(self, num_heads: int = 0, target: str = "cpu", hidden_size: int = 0):
        # remove_nodes=False: exports take Shape() of intermediate Q/K/V tensors to build
        # the Reshape targets inside this very pattern; those uses die with the pattern,
        # and the cleanup pass removes the dead chain. Real outside uses keep it alive (correct, slower).
        super().__init__(name="Attention", remove_nodes=False)
        self.num_heads = num_heads
        self.hidden_size = hidden_size  # given by the user (0 = detect): checked against the weights
        self.target = target
        self._packed: dict[tuple[int, ...], tuple[ir.Value, ir.Value]] = {}

    def setup(self):
        self._packed = {}
        self._mask_verdicts: dict[int, str | None] = {}
        # Per mask input: values earlier matches showed to be (batch, sequence, ...) of it.
        self._shapes_seen: dict[int, dict[ir.Value, ShapeOf]] = {}

    def pattern(self, op, x, wq, bq, wk, bk, wv, bv, q_shape, k_shape, v_shape, q_factor, k_factor, s_factor, mask, zero):
        def heads(weight, bias, shape):
            projected = pattern.OrValue([op.Add(op.MatMul(x, weight), bias), op.MatMul(x, weight)])
            return op.Reshape(projected, shape, _allow_other_attributes=True)

        query = op.Transpose(
            scaled(op, heads(wq, bq, q_shape), pattern.Var("h_factor"), "h_scaling"), perm=[0, 2, 1, 3], _outputs=["query_heads"]
        )
        key = heads(wk, bk, k_shape)
        key_t = pattern.OrValue(
            [
                op.Transpose(key, perm=[0, 2, 3, 1]),
                op.Reshape(
                    op.Transpose(
                        op.Reshape(op.Transpose(key, perm=[0, 2, 1, 3]), pattern.ANY_VALUE, _allow_other_attributes=True),
                        perm=[0, 2, 1],
                    ),
                    pattern.ANY_VALUE,
                    _allow_other_attributes=True,
                ),
                op.Transpose(op.Transpose(key, perm=[0, 2, 1, 3]), perm=[0, 1, 3, 2]),
            ]
        )
        value = op.Transpose(heads(wv, bv, v_shape), perm=[0, 2, 1, 3], _outputs=["value_heads"])
        scores = op.MatMul(scaled(op, query, q_factor, "q_scaling"), scaled(op, key_t, k_factor, "k_scaling"))
        scores = scaled(op, scores, s_factor, "s_scaling")
        probs = masked_softmax(op, scores, mask, zero)
        context = op.MatMul(probs, value)
        context = pattern.OrValue([op.Reshape(context, pattern.ANY_VALUE, _allow_other_attributes=True), context])
        context = op.Transpose(context, perm=[0, 2, 1, 3])
        return op.Reshape(context, pattern.ANY_VALUE, _allow_other_attributes=True, _outputs=["attn_out"])

    def _split(self, q_shape, hidden: int) -> tuple[int, int] | None:
        tail = shape_tail(without_casts(q_shape), 2)
        if tail is not None:  # [num_heads, head_size]; either may be -1 (inferred by Reshape)
            heads, size = tail
            if heads == -1 and size > 0 and hidden % size == 0:
                heads = hidden // size
            if size == -1 and heads > 0 and hidden % heads == 0:
                size = hidden // heads
            if heads > 0 and size > 0 and heads * size == hidden:
                return heads, size
        if self.num_heads and hidden % self.num_heads == 0:
            return self.num_heads, hidden // self.num_heads
        return None

    def check(self, context, x, wq, wk, wv, q_shape, k_shape, v_shape, probs, masked, attn_out, mask=None, zero=None, bq=None, bk=None, bv=None, **tags):
        result = pattern.MatchResult()
        weights = [constant_array(w) for w in (wq, wk, wv)]
        biases = [constant_array(b) if b is not None else None for b in (bq, bk, bv)]
        if any(w is None or w.ndim != 2 for w in weights):
            return result.fail("Q/K/V projections are not constant 2-D weights")
        if weights[0].shape != weights[1].shape or weights[2].shape[0] != weights[0].shape[0]:
            return result.fail("Q and K weights differ in shape, or V reads another width")
        for given, array, weight in zip((bq, bk, bv), biases, weights):
            if given is not None and (array is None or array.shape != (weight.shape[1],)):
                return result.fail("a Q/K/V bias is not a constant vector of the projection width")
        if _is_flat(x):
            return result.fail("the projections read a flattened (batch x sequence, hidden) input")
        model_width, width, v_width = weights[0].shape[0], weights[0].shape[1], weights[2].shape[1]
        split = self._heads_of(q_shape, model_width, width)
        if split is None:
            return result.fail(f"cannot tell the head split of hidden size {width}; pass num_heads")
        heads, size = split
        if self._graph_split(k_shape, width) not in (None, split):
            return result.fail("K is split into other heads than Q")
        v_split = self._graph_split(v_shape, v_width)
        if v_width % heads or v_split not in (None, (heads, v_width // heads)):
            return result.fail("V is split into other heads than Q")
        out_rank = _output_rank(attn_out) or len(target_entries(attn_out.producer().inputs[1]) or ())
        if out_rank not in (2, 3) or shape_tail(without_casts(attn_out.producer().inputs[1]), 1) not in ([v_width], [-1], None):
            return result.fail("the heads are not merged back into a (batch, sequence, hidden) or (tokens, hidden) tensor")
        if masked == "add" and _is_zero_mask(mask, _score_dims(probs, mask, tags["query_heads"], tags["value_heads"])):
            masked, mask = "none", None  # an always-true mask: attention without one
        self._widths, self._out_rank = (width, v_width), out_rank
        result = self._check_core(context, width, q_shape, probs, masked, mask, zero, tags, split=split)
        if result and masked == "add":
            problem = self._padding_problem(context, mask, x, model_width, tags["query_heads"], tags["value_heads"])
            if problem:
                return result.fail(problem)
        return result

    def _padding_problem(self, context, mask, x, model_width, query_heads, value_heads) -> str | None:
        """Why the additive ``mask`` is not the key padding of the mask input, or None (see :mod:`padding_mask`)."""
        (heads, size), v_width = self._heads, self._widths[1]
        # Exporters build the mask once, from the shape of the first layer's input (the
        # embeddings), so later layers' mask cones reach it too: without its shape known,
        # the probe would walk back into the embedding tables (90 MB at bert-base size).
        seen = self._shapes_seen.setdefault(id(self._mask_input), {})
        seen[x] = lambda b, p, s: (b, s, model_width)
        seen[query_heads] = lambda b, p, s: (b, heads, s, size)
        seen[value_heads] = lambda b, p, s: (b, heads, s, v_width // heads)
        if id(mask) not in self._mask_verdicts:  # every layer adds the same mask: run it once
            known = dict(seen)
            graph = context.graph_or_function
            self._mask_verdicts[id(mask)] = key_padding_problem(mask, model=context.model, graph=graph, mask_input=self._mask_input, known=known)
        return self._mask_verdicts[id(mask)]

    def _graph_split(self, shape_value, width: int) -> tuple[int, int] | None:
        """(heads, head size) the Reshape target itself states, or None where it does not say."""
        tail = shape_tail(without_casts(shape_value), 2)
        if tail is None:
            return None
        heads, size = tail
        if heads == -1 and size > 0 and width % size == 0:
            heads = width // size
        if size == -1 and heads > 0 and width % heads == 0:
            size = width // heads
        return (heads, size) if heads > 0 and size > 0 and heads * size == width else None

    def _heads_of(self, q_shape, model_width: int, width: int) -> tuple[int, int] | None:
        """The head split, from the graph where it says, else from ``num_heads``; given values that contradict the graph are refused.

        ``model_width`` is the hidden size the projections read, ``width`` what Q
        projects to: they differ in layers with pruned heads, where the graph's head size
        (not its head count) is what a given ``num_heads`` must agree with.
        """
        if self.hidden_size and self.hidden_size not in (model_width, width):
            raise TfoptError(
                f"hidden_size={self.hidden_size} does not match the model: its attention projections read "
                f"{model_width} values per token (pass --hidden_size {model_width}, or 0 to detect)"
            )
        split = self._graph_split(q_shape, width)
        given = self.num_heads
        if not given:
            return split
        if split is not None:
            heads, size = split
            per_head = (self.hidden_size or model_width) / given
            if heads != given and per_head != size:
                raise TfoptError(
                    f"num_heads={given} contradicts the model: its attention splits {width} values into {heads} heads of {size} "
                    f"(pass --num_heads {heads if width == model_width else int(model_width // size)}, or 0 to detect)"
                )
            return split
        if width % given:
            raise TfoptError(f"num_heads={given} does not divide the model's attention width {width}")
        return given, width // given

    def _check_core(self, context, hidden, q_shape, probs, masked, mask, zero, tags, split=None):
        """Checks shared with the decoder rule: head split, softmax axis, NaN guard, scale, mask source."""
        result = pattern.MatchResult()
        split = split or self._split(q_shape, hidden)
        if split is None:
            return result.fail(f"cannot tell the head split of hidden size {hidden}; pass num_heads")
        axis = probs.producer().attributes.get_int("axis", -1)
        if axis not in (-1, 3):
            return result.fail(f"Softmax over axis {axis}, not the key axis")
        if zero is not None and scalar(zero) != 0.0:
            return result.fail("NaN guard does not write zeros")
        if tags.get("cleared") is not None and scalar(tags["cleared"]) != 0.0:
            return result.fail("masked probabilities are not set to zero")
        if masked == "select" and (scalar(tags.get("fill")) is None or scalar(tags["fill"]) > -1e4):
            return result.fail("masked scores are not set to a large negative number")
        if tags.get("guard") == "select" and masked != "select":
            return result.fail("probabilities are masked after Softmax but the scores are not")
        scale = 1.0
        scalings = (("q_scaling", "q_factor"), ("h_scaling", "h_factor"), ("k_scaling", "k_factor"), ("s_scaling", "s_factor"))
        for tag, factor in scalings:
            part = scale_of(tags.get(tag, "None"), tags.get(factor))
            if part is None:
                return result.fail(f"{factor} is not a constant scalar")
            scale *= part
        self._heads, self._scale = split, scale
        self._mask_input = None
        if masked != "none":
            condition = mask if masked == "add" else tags["condition"]
            sources = source_graph_inputs(condition, context.graph_or_function)
            if not sources and self.causal_only_mask:
                return result  # a causal mask from shapes alone (a decoder without attention_mask): probed later
            if len(sources) != 1:
                return result.fail(f"mask is not computed from exactly one graph input: {sorted(sources)}")
            (name,) = sources
            self._mask_input = next(v for v in context.graph_or_function.inputs if v.name == name)
            shape = self._mask_input.shape
            if shape is not None and shape.rank() != 2:
                return result.fail(f"mask input {name} is not 2-D (batch, sequence)")
            if masked == "select" and not _is_key_mask(condition, self._mask_input, context.graph_or_function):
                return result.fail("the select condition is not the mask input reshaped to (batch, 1, 1, keys)")
        return result

    def _zeros(self, op, width: int) -> ir.Value:
        key = ("zeros", width)
        if key not in self._packed:
            self._packed[key] = op.initializer(ir.tensor(np.zeros(width, np.float32), name=f"attention.zero_bias{width}"))
        return self._packed[key]

    def _pack(self, op, kind: str, parts) -> ir.Value:
        """One concatenated initializer per distinct Q/K/V triple (ALBERT shares them across layers)."""
        key = (kind, *(id(v) for v in parts))
        if key not in self._packed:
            arrays = [constant_array(v) for v in parts]
            name = f"{parts[0].name or 'attention'}.packed_qkv_{kind}{len(self._packed)}"
            self._packed[key] = op.initializer(ir.tensor(np.concatenate(arrays, axis=-1), name=name))
        return self._packed[key]

    def rewrite(self, op, x, wq, wk, wv, bq=None, bk=None, bv=None, **_):
        width, v_width = self._widths
        bq, bk = (b if b is not None else self._zeros(op, width) for b in (bq, bk))  # no bias: add zeros
        bv = bv if bv is not None else self._zeros(op, v_width)
        num_heads, head_size = self._heads
        attributes = {"num_heads": num_heads}
        if not math.isclose(self._scale, 1.0 / math.sqrt(head_size), rel_tol=1e-5):
            attributes["scale"] = float(self._scale)
        mask = int32_of(op, self._mask_input) if self._mask_input is not None else None
        bias = self._pack(op, "bias", (bq, bk, bv))
        if self.target == "cpu":
            q, k, v = (op.MatMul(x, w) for w in (wq, wk, wv))
            output = op.MultiHeadAttention(q, k, v, bias, mask, **attributes, _domain=MS_DOMAIN)
        else:
            if v_width != width:  # packed weight of unequal parts: say where Q, K and V end
                attributes["qkv_hidden_sizes"] = [width, width, v_width]
            weight = self._pack(op, "weight", (wq, wk, wv))
            output = op.Attention(x, weight, bias, mask, **attributes, _domain=MS_DOMAIN)
        if self._out_rank == 2:  # the heads were merged straight into (tokens, hidden)
            output = op.Reshape(output, int64_constant(op, [-1, v_width]))
        return output


def _output_rank(value: ir.Value) -> int | None:
    """Rank of a Reshape's output: from shape inference, else from its constant target."""
    if value.shape is not None:
        return value.shape.rank()
    target = constant_array(value.producer().inputs[1])
    return int(target.size) if target is not None else None


def key_transposed(op, key):
    """K^T as exports write it: one Transpose of the last two axes, or a 3-D round trip (dynamo sdpa)."""
    return pattern.OrValue(
        [
            op.Transpose(key, perm=[0, 1, 3, 2]),
            op.Reshape(
                op.Transpose(op.Reshape(key, pattern.ANY_VALUE, _allow_other_attributes=True), perm=[0, 2, 1]),
                pattern.ANY_VALUE,
                _allow_other_attributes=True,
            ),
        ]
    )


def _int64_constant(op, values: list[int]) -> ir.Value:
    return op.Constant(value=ir.tensor(np.array(values, dtype=np.int64)))


class CausalSelfAttentionWithPast(SelfAttention):
    """GPT-2 attention with past state -> ``MultiHeadAttention(unidirectional=1)`` with past/present.

    Matches one packed QKV projection split in three, the past key/value concatenated
    in front of the new ones (those concats are the ``present`` outputs), the causal +
    padding mask, and the same scale/NaN-guard variants as the encoder rule.
    ``MultiHeadAttention`` takes the per-layer past key/value tensors as they are, so
    the model's inputs and outputs do not change; it is used for every target
    (``Attention`` would need the past packed into one tensor, and
    ``GroupQueryAttention`` assumes right padding, while generation pads on the left).
    """

    def __init__(self, num_heads: int = 0, target: str = "cpu", with_past: bool = True):
        super().__init__(num_heads, target)
        # Without past: the same attention exported without a cache (GPT2Model(use_cache=False)).
        self.name = "AttentionWithPast" if with_past else "CausalAttention"
        self.with_past = with_past
        self.causal_only_mask = True  # GPT-2 exported without attention_mask: the probe proves it causal

    def pattern(self, op, x, w_qkv, b_qkv, q_shape, k_shape, v_shape, past_key, past_value, q_factor, k_factor, s_factor, mask, zero):
        projected = op.MatMul(x, w_qkv, _outputs=["qkv_matmul"])
        q, k, v = op.Split(
            op.Add(projected, b_qkv), _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["q", "k", "v"]
        )

        def heads(value, shape, name):
            return op.Transpose(op.Reshape(value, shape, _allow_other_attributes=True), perm=[0, 2, 1, 3], _outputs=[name])

        if self.with_past:
            present_key = op.Concat(past_key, heads(k, k_shape, "key_heads"), _allow_other_attributes=True, _outputs=["present_key"])
            present_value = op.Concat(
                past_value, heads(v, v_shape, "value_heads"), _allow_other_attributes=True, _outputs=["present_value"]
            )
        else:
            present_key, present_value = heads(k, k_shape, "present_key"), heads(v, v_shape, "present_value")
        query = scaled(op, heads(q, q_shape, "query_heads"), q_factor, "q_scaling")
        key_t = key_transposed(op, present_key)
        if not self.with_past:  # the head split and K^T as one Transpose (two folded by prepare)
            key_t = pattern.OrValue([key_t, op.Transpose(op.Reshape(k, k_shape, _allow_other_attributes=True), perm=[0, 2, 3, 1])])
        key_t = scaled(op, key_t, k_factor, "k_scaling")
        scores = scaled(op, op.MatMul(query, key_t, _outputs=["scores"]), s_factor, "s_scaling")
        probs = masked_softmax(op, scores, mask, zero)
        context = op.MatMul(probs, present_value)
        context = pattern.OrValue([op.Reshape(context, pattern.ANY_VALUE, _allow_other_attributes=True), context])
        context = op.Transpose(context, perm=[0, 2, 1, 3])
        return op.Reshape(context, pattern.Var("out_shape"), _allow_other_attributes=True, _outputs=["attn_out"])

    def check(self, context, x, w_qkv, b_qkv, q_shape, q, probs, masked, present_key=None, present_value=None, mask=None, zero=None, **tags):
        weight, bias = constant_array(w_qkv), constant_array(b_qkv)
        if weight is None or weight.ndim != 2 or bias is None or bias.ndim != 1 or weight.shape[1] % 3:
            return pattern.MatchResult().fail("QKV projection is not a constant [D, 3D] weight with a bias")
        split = q.producer()
        if split.attributes.get_int("axis", 0) not in (-1, 2):
            return pattern.MatchResult().fail("QKV split is not along the hidden axis")
        sizes = constant_array(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None else None
        if sizes is None and split.attributes.get("split") is not None:  # opset < 13
            sizes = np.array(split.attributes.get_ints("split"))
        if sizes is not None and (len(sizes) != 3 or len(set(int(v) for v in sizes)) != 1):
            return pattern.MatchResult().fail("QKV split into unequal parts")
        for concat in (present_key.producer(), present_value.producer()) if self.with_past else ():
            if concat.attributes.get_int("axis", 0) not in (-2, 2):
                return pattern.MatchResult().fail("past is not concatenated along the sequence axis")
        hidden = weight.shape[1] // 3
        self._hidden = hidden
        if _output_rank(tags["attn_out"]) not in (2, 3):
            return pattern.MatchResult().fail("cannot tell whether the attention output is 2-D or 3-D")
        if shape_tail(tags["out_shape"], 1) not in ([hidden], [-1], None):
            return pattern.MatchResult().fail("the attention output is not merged back to the hidden size")
        # Reuse the encoder checks for heads, scale, NaN guard and mask provenance.
        result = self._check_core(context, hidden, q_shape, probs, masked, mask, zero, tags)
        if not result:
            return result
        if any(self._split(tags[name], hidden) != self._heads for name in ("k_shape", "v_shape")):
            return result.fail("K or V is split into other heads than Q")
        problem = self._causal_problem(context, x, present_key, present_value, masked, mask, dict(tags, q=q))
        self._opset = context.model.opset_imports.get("", 1)
        return result.fail(problem) if problem else result

    def _causal_problem(self, context, x, present_key, present_value, masked, mask, tags) -> str | None:
        """Why ``unidirectional=1`` + the 2-D mask would not compute this mask, or None (see :mod:`causal_mask`)."""
        if masked == "none":
            return "no mask: unidirectional=1 would add a causal one"
        keep = mask if masked == "add" else tags["condition"]
        if id(keep) in self._causal_verdicts:
            return self._causal_verdicts[id(keep)]
        heads, size = self._heads
        hidden = self._hidden
        flat = x.shape is not None and x.shape.rank() == 2  # GPT-2 Conv1D on (B*S, D)

        def tokens(width):
            return (lambda b, p, s: (b * s, width)) if flat else (lambda b, p, s: (b, s, width))

        known = {x: tokens(hidden), tags["qkv_matmul"]: tokens(3 * hidden), tags["scores"]: lambda b, p, s: (b, heads, s, p + s)}
        known.update({tags[name]: tokens(hidden) for name in ("q", "k", "v")})
        known.update({tags[name]: (lambda b, p, s: (b, heads, s, size)) for name in ("query_heads", "key_heads", "value_heads") if tags.get(name) is not None})
        known.update({tags[name]: (lambda b, p, s: (b, heads, p, size)) for name in ("past_key", "past_value") if tags.get(name) is not None})
        known.update({value: (lambda b, p, s: (b, heads, p + s, size)) for value in (present_key, present_value) if value is not None})
        problem = causal_mask_problem(
            keep, model=context.model, graph=context.graph_or_function, mask_input=self._mask_input, known=known,
            past=tags.get("past_key"), additive=masked == "add", with_past=self.with_past,
        )
        self._causal_verdicts[id(keep)] = problem
        return problem

    def rewrite(self, op, x, b_qkv, qkv_matmul, attn_out, present_key=None, present_value=None, past_key=None, past_value=None, **_):
        num_heads, head_size = self._heads
        attributes = {"num_heads": num_heads, "unidirectional": 1}
        if not math.isclose(self._scale, 1.0 / math.sqrt(head_size), rel_tol=1e-5):
            attributes["scale"] = float(self._scale)
        mask = int32_of(op, self._mask_input) if self._mask_input is not None else None
        # Constant(value=...) and Split's sizes as an attribute before opset 13: valid at any opset
        # (convert_to_onnx wrote GPT-2 at opset 11, which has neither value_ints nor a sizes input).
        if self._opset >= 13:
            q, k, v = op.Split(qkv_matmul, _int64_constant(op, [self._hidden] * 3), axis=-1, _outputs=3)
        else:
            q, k, v = op.Split(qkv_matmul, axis=-1, split=[self._hidden] * 3, _outputs=3)
        if not self.with_past:  # heads read elsewhere (a present output) stay computed by the graph's own nodes
            output = op.MultiHeadAttention(q, k, v, b_qkv, mask, **attributes, _domain=MS_DOMAIN)
        else:
            output, new_present_key, new_present_value = op.MultiHeadAttention(
                q, k, v, b_qkv, mask, None, past_key, past_value, **attributes, _domain=MS_DOMAIN, _outputs=3
            )
            # A graph without value_info may leave the old presents untyped: the past's type is theirs.
            self._present_swaps += [(present_key, new_present_key, past_key.dtype), (present_value, new_present_value, past_value.dtype)]
        if _output_rank(attn_out) == 2:  # GPT-2 merges heads straight into Gemm's 2-D input
            output = op.Reshape(output, _int64_constant(op, [-1, self._hidden]))
        return output

    def setup(self):
        super().setup()
        self._present_swaps: list[tuple[ir.Value, ir.Value, ir.DataType | None]] = []
        self._causal_verdicts: dict[int, str | None] = {}  # per mask value: all layers share one

    def cleanup(self):
        """The pattern has one output on purpose: multi-output patterns make the matcher try
        node combinations (seconds per model); the present values are swapped here instead."""
        swap_presents(self._present_swaps)
        self._present_swaps = []


def swap_presents(swaps: list[tuple[ir.Value, ir.Value, ir.DataType | None]]) -> None:
    """Point the model's ``present`` outputs (and any reader) at a fused op's present outputs.

    ``swaps``: (the graph's present value, the fused op's, the past's type). The model's
    outputs keep their names. A fused op that is in no graph is skipped: while an onnxscript
    ``MatchingTracer`` records, rules build their replacement without inserting it.
    """
    for old, new, past_type in swaps:
        if new.producer() is None or new.producer().graph is None:
            continue
        if old.is_graph_output():
            name = old.name
            old.name = f"{name}_unfused"
            new.name = name
        # The fused op's outputs carry no type: an output without one fails the ONNX checker.
        new.dtype = new.dtype or old.dtype or past_type
        new.shape = new.shape or old.shape
        feeding = _input_cone(new.producer())
        for user, index in list(old.uses()):
            if id(user) not in feeding:  # a reader the fused op depends on (a mask sized by Shape(present)) keeps the old value
                user.replace_input_with(index, new)
        graph = new.producer().graph
        if old.is_graph_output():
            graph.outputs[graph.outputs.index(old)] = new


def _input_cone(node: ir.Node) -> set[int]:
    """ids of the nodes ``node`` reads from, directly or not."""
    seen: set[int] = set()
    stack = [value.producer() for value in node.inputs if value is not None]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        stack.extend(value.producer() for value in current.inputs if value is not None)
    return seen


class TransposedScores(pattern.RewriteRuleClassBase):
    """Transpose(MatMul(Transpose(k, pk), Transpose(q, pq)), [0, 1, 3, 2]) -> MatMul(Transpose(q, ..), Transpose(k, ..)).

    Keras computes scores as ``einsum("aecd,abcd->acbe", key, query)``, which tf2onnx
    writes as K . Q^T transposed afterwards. (A B)^T = B^T A^T, and each operand's
    transpose folds into the one already there, giving the Q . K^T every attention form
    above starts from.
    """

    def pattern(self, op, a, b):
        product = op.MatMul(op.Transpose(a, _outputs=["a_t"]), op.Transpose(b, _outputs=["b_t"]))
        return op.Transpose(product, perm=[0, 1, 3, 2])

    def check(self, context, a_t, b_t, **_):
        perms = [list(v.producer().attributes.get_ints("perm", [])) for v in (a_t, b_t)]
        if any(sorted(p) != [0, 1, 2, 3] for p in perms):
            return pattern.MatchResult().fail("operands are not 4-D transposes with explicit perms")
        return pattern.MatchResult()

    def rewrite(self, op, a, b, a_t, b_t, **_):
        def swapped(value, transposed):
            perm = list(transposed.producer().attributes.get_ints("perm"))
            return op.Transpose(value, perm=[perm[i] for i in (0, 1, 3, 2)])

        return op.MatMul(swapped(b, b_t), swapped(a, a_t))


class SubtractedMask(pattern.RewriteRuleClassBase):
    """Softmax(Sub(scores, m)) -> Softmax(Add(scores, Neg(m))): keras2onnx subtracts ``10000 * (1 - mask)``.

    Exact (x - m = x + (-m)), and the mask forms above are all additive.
    """

    def pattern(self, op, scores, mask):
        return op.Softmax(op.Sub(scores, mask), _allow_other_attributes=True, _outputs=["probs"])

    def rewrite(self, op, scores, mask, probs, **_):
        return op.Softmax(op.Add(scores, op.Neg(mask)), axis=probs.producer().attributes.get_int("axis", -1))


def attention_rules(num_heads: int = 0, target: str = "cpu", hidden_size: int = 0) -> list[pattern.RewriteRule]:
    return [
        TransposedScores.rule(),
        SubtractedMask.rule(),
        SelfAttention.rule(num_heads, target, hidden_size),
        CausalSelfAttentionWithPast.rule(num_heads, target),
        CausalSelfAttentionWithPast.rule(num_heads, target, with_past=False),
    ]
