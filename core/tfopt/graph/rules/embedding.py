"""EmbedLayerNormalization: word + (segment) + position embedding lookups and their LayerNorm, in one op.

Position (and, for RoBERTa, segment) ids are often computed in the graph: a slice
of a buffer, or a cumsum over the padding mask. Rather than assume 0..S-1, the
rule passes whatever index tensor the graph computed as ``position_ids``, so the
fused op is exact for every variant.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ..values import MS_DOMAIN, constant_array, int32_of, is_constant_vector, scalar, shape_tail, traced_graph_input
from .reshapes import int64_constant


def _is_table(value, width: int | None = None) -> bool:
    array = constant_array(value)
    return array is not None and array.ndim == 2 and (width is None or array.shape[1] == width)


class EmbedLayerNorm(pattern.RewriteRuleClassBase):
    """LN(Gather(word, ids) + Gather(a, i) [+ Gather(b, j)]) -> EmbedLayerNormalization.

    Exporters add the lookups in different orders (torch: word + segment + position;
    TF: word + position + segment), so the check assigns roles instead of the pattern:
    the segment lookup is the one indexed by a graph input (token_type_ids), else the
    one with the smaller table (2 token types vs hundreds of positions).
    """

    def __init__(self, with_segment: bool, keep_sum: bool = False):
        # keep_sum: the embedding sum is read elsewhere too (a pre-LN decoder's residual into
        # layer 0, as GPT-2's): the fused op emits it as its embedding_sum output.
        name = "EmbedLayerNorm" if with_segment else "EmbedLayerNormNoSegment"
        super().__init__(name=name + ("+Sum" if keep_sum else ""))
        self.with_segment = with_segment
        self.keep_sum = keep_sum

    def pattern(self, op, word_table, ids, table_a, index_a, table_b, index_b, gamma, beta):
        total = op.Add(op.Gather(word_table, ids, _outputs=["word"]), op.Gather(table_a, index_a, _outputs=["lookup_a"]))
        if self.with_segment:
            total = op.Add(total, op.Gather(table_b, index_b, _outputs=["lookup_b"]))
        out = op.LayerNormalization(total, gamma, beta, _outputs=["out"])
        return (out, total) if self.keep_sum else out

    def check(self, context, word_table, ids, gamma, beta, out, word, table_a, index_a, lookup_a, **kw):
        result = pattern.MatchResult()
        graph = context.graph_or_function
        width = constant_array(word_table).shape[1] if _is_table(word_table) else None
        lookups = [(table_a, index_a, lookup_a)]
        if self.with_segment:
            lookups.append((kw["table_b"], kw["index_b"], kw["lookup_b"]))
        if width is None or not all(_is_table(table, width) for table, _, _ in lookups):
            return result.fail("embedding tables are not constant matrices of one width")
        if any(g.producer().attributes.get_int("axis", 0) != 0 for g in [word] + [l for _, _, l in lookups]):
            return result.fail("a lookup is not along axis 0")
        if not (is_constant_vector(gamma, width) and is_constant_vector(beta, width)):
            return result.fail("LayerNorm scale/shift are not constant vectors")
        if out.producer().attributes.get_int("axis", -1) != -1:
            return result.fail("LayerNorm is not over the last axis")
        if traced_graph_input(ids, graph) is None:
            return result.fail("word ids are computed, not a model input")
        if self.with_segment:
            fed = [traced_graph_input(index, graph) is not None for _, index, _ in lookups]
            rows = [constant_array(table).shape[0] for table, _, _ in lookups]
            segment_first = fed[0] and not fed[1] if fed[0] != fed[1] else rows[0] < rows[1]
            self._position, self._segment = (lookups[1], lookups[0]) if segment_first else (lookups[0], lookups[1])
        else:
            self._position, self._segment = lookups[0], None
        return result

    def rewrite(self, op, word_table, ids, gamma, beta, out, **_):
        epsilon = out.producer().attributes.get_float("epsilon", 1e-5)
        position_table, position_ids, _ = self._position
        segment_table, segment_ids = (self._segment[0], int32_of(op, self._segment[1])) if self._segment else (None, None)
        outputs = op.EmbedLayerNormalization(
            int32_of(op, ids),
            segment_ids,
            word_table,
            position_table,
            segment_table,
            gamma,
            beta,
            None,  # mask: Attention takes the raw 2-D mask instead (any padding side)
            int32_of(op, position_ids),
            epsilon=epsilon,
            _domain=MS_DOMAIN,
            _outputs=3 if self.keep_sum else 2,  # ORT's schema requires the mask_index output; nothing reads it
        )
        return (outputs[0], outputs[2]) if self.keep_sum else outputs[0]


class WrappedIdsLookup(pattern.RewriteRuleClassBase):
    """Gather(table, where(ids < 0, ids + V, ids)) -> Gather(table, ids), V = the table's rows.

    Keras' ``Embedding`` wraps negative ids itself (tf2onnx writes the ``SelectV2`` as
    ``Cast(ids < 0) * (ids + V) + ids * Cast(!(ids < 0))``). ONNX ``Gather`` already
    reads index i in [-V, 0) as i + V, so the wrap is exact to drop for every index
    Gather accepts; what is left is the plain lookup EmbedLayerNormalization fuses.
    """

    def __init__(self):
        super().__init__(remove_nodes=False)  # the wrapped ids may also size the position ids

    def setup(self):
        self._unwrapped: list[tuple[ir.Value, ir.Value]] = []

    def pattern(self, op, table, ids, zero, rows):
        negative = op.Less(pattern.OrValue([op.Cast(ids), ids]), zero)
        shifted = op.Mul(op.Cast(negative), op.Add(ids, rows))
        kept = op.Mul(ids, op.Cast(op.Not(negative)))
        return op.Gather(table, op.Add(shifted, kept, _outputs=["wrapped"]), _outputs=["lookup"])

    def check(self, context, table, zero, rows, lookup, **_):
        array = constant_array(table)
        if array is None or array.ndim != 2 or lookup.producer().attributes.get_int("axis", 0) != 0:
            return pattern.MatchResult().fail("not a lookup along the rows of a constant table")
        if any(constant_array(v) is None or constant_array(v).ndim != 0 for v in (zero, rows)):
            return pattern.MatchResult().fail("the wrap's constants are not scalars (they could broadcast the ids)")
        if scalar(zero) != 0.0 or scalar(rows) != array.shape[0]:
            return pattern.MatchResult().fail("the wrap does not add the table's row count to negative ids")
        return pattern.MatchResult()

    def rewrite(self, op, table, ids, wrapped, **_):
        self._unwrapped.append((wrapped, ids))
        return op.Gather(table, ids, axis=0)

    def cleanup(self):
        """Shape() of the wrapped ids (sizing the position ids) reads the ids' shape: same tensor shape, no wrap to run."""
        for wrapped, ids in self._unwrapped:
            for node, index in list(wrapped.uses()):
                if node.op_type == "Shape" and node.domain == "":
                    node.replace_input_with(index, ids)
        self._unwrapped = []


class SlicedPositionTable(pattern.RewriteRuleClassBase):
    """Expand(table[0:n, :], [B, S, H]) -> Gather(table, Expand(Range(0, n), [B, S])).

    Keras' ``PositionEmbedding`` slices the first n rows of its table and broadcasts them
    (TF ``Slice(begin=[0, 0], size=[n, H])``, which tf2onnx lowers to ends =
    size + (size == -1) * INT_MAX + begin). As a lookup of positions 0..n-1 it is the form
    EmbedLayerNormalization takes; n = min(ends[0], rows) is what Slice itself computes.
    """

    def __init__(self):
        super().__init__(remove_nodes=False)

    def pattern(self, op, table, count, width, minus_one, big, begin, offset, target):
        size = op.Concat(count, width, axis=0)
        ends = op.Add(op.Add(size, op.Mul(op.Cast(op.Equal(minus_one, size)), big)), offset, _outputs=["ends"])
        return op.Expand(op.Slice(table, begin, ends), target)

    def check(self, context, table, width, minus_one, big, begin, offset, target, **_):
        result = pattern.MatchResult()
        array = constant_array(table)
        if array is None or array.ndim != 2:
            return result.fail("position table is not a constant matrix")
        rows, hidden = array.shape
        for value in (begin, offset):
            start = constant_array(value)
            if start is None or start.ravel().tolist() != [0, 0]:
                return result.fail("slice does not start at row 0, column 0")
        if constant_array(width) is None or constant_array(width).ravel().tolist() != [hidden]:
            return result.fail("slice does not take every column")
        if scalar(minus_one) != -1 or (scalar(big) or 0) < rows:
            return result.fail("not TF's Slice(begin, size) lowering")
        if target.shape is None or target.shape.rank() != 1 or target.shape[0] != 3:
            return result.fail("broadcast target is not (batch, sequence, hidden)")
        source = target.producer().inputs[0] if target.producer() is not None and target.producer().op_type == "Cast" else target
        if shape_tail(source, 1) not in ([hidden], [1]):
            return result.fail("broadcast target does not keep the hidden width")
        return result

    def rewrite(self, op, table, ends, target, **_):
        rows = constant_array(table).shape[0]
        first = op.Slice(ends, int64_constant(op, [0]), int64_constant(op, [1]))
        count = op.Min(op.Cast(first, to=ir.DataType.INT64), int64_constant(op, [rows]))
        zero, one = op.Constant(value=ir.tensor(np.array(0, np.int64))), op.Constant(value=ir.tensor(np.array(1, np.int64)))
        positions = op.Unsqueeze(op.Range(zero, op.Squeeze(count), one), int64_constant(op, [0]))
        batch_sequence = op.Slice(op.Cast(target, to=ir.DataType.INT64), int64_constant(op, [0]), int64_constant(op, [2]))
        return op.Gather(table, op.Expand(positions, batch_sequence), axis=0)


class FoldedPositionLookup(pattern.RewriteRuleClassBase):
    """word lookup (+ segment lookup) + constant [1, S, H] -> the same + Gather(that constant as a table, [[0..S-1]]).

    At static shapes torch's dynamo exporter folds the position lookup itself: positions
    0..S-1 of the table become one constant addend. Read as a lookup of S rows by positions
    0..S-1 (the same numbers, exactly), it is the form EmbedLayerNormalization takes.
    """

    def __init__(self, with_segment: bool):
        super().__init__(name="FoldedPositionLookup" if with_segment else "FoldedPositionLookupNoSegment", remove_nodes=False)
        self.with_segment = with_segment

    def pattern(self, op, word_table, ids, segment_table, segment_ids, positions):
        total = op.Gather(word_table, ids, _outputs=["word"])
        if self.with_segment:
            total = op.Add(total, op.Gather(segment_table, segment_ids))
        return op.Add(total, positions, _outputs=["out"])

    def check(self, context, word_table, ids, positions, out, **_):
        result = pattern.MatchResult()
        table, added = constant_array(word_table), constant_array(positions)
        if table is None or table.ndim != 2 or added is None or added.ndim != 3 or added.shape[0] != 1 or added.shape[2] != table.shape[1]:
            return result.fail("the addend is not a constant (1, sequence, hidden) table next to a word lookup")
        if traced_graph_input(ids, context.graph_or_function) is None:
            return result.fail("word ids are computed, not a model input")
        if not any(node.op_type == "LayerNormalization" for node, _ in out.uses()):
            return result.fail("the sum is not normalized (not an embedding layer)")
        return result

    def rewrite(self, op, word_table, ids, positions, out, **kw):
        added = constant_array(positions)
        table = op.initializer(ir.tensor(np.ascontiguousarray(added[0]), name=f"{positions.name or 'positions'}_table"))
        rows = op.Constant(value=ir.tensor(np.arange(added.shape[1], dtype=np.int64)[None, :]))
        total = op.Gather(word_table, ids, axis=0)
        if self.with_segment:
            total = op.Add(total, op.Gather(kw["segment_table"], kw["segment_ids"], axis=0))
        return op.Add(total, op.Gather(table, rows, axis=0))


class EmbeddingSkipLayerNorm(pattern.RewriteRuleClassBase):
    """com.microsoft.SkipLayerNormalization(Gather + Gather, Gather) -> LayerNormalization(Gather + Gather + Gather).

    A graph that already went through a fusion tool may hold its embedding LayerNorm as a
    SkipLayerNormalization of the lookups (ONNX Runtime's ``embedlayer_fusion`` test graphs).
    Written back as the sum and LayerNorm it computes (no bias input: exactly that), the
    EmbedLayerNormalization rules below take it. Only lookups of constant tables qualify, so
    every other SkipLayerNormalization stays as it is.
    """

    def __init__(self):
        super().__init__(remove_nodes=False)

    def pattern(self, op, a, b, skip, gamma, beta):
        lookups = op.Add(op.Gather(pattern.Var("table_a"), a), op.Gather(pattern.Var("table_b"), b), _outputs=["pair"])
        return op.SkipLayerNormalization(lookups, skip, gamma, beta, _domain=MS_DOMAIN, _outputs=["out"])

    def check(self, context, skip, table_a, table_b, out, **_):
        node = out.producer()
        if len(node.inputs) > 4 or any(o.uses() for o in node.outputs[1:]) or any(o.is_graph_output() for o in node.outputs[1:]):
            return pattern.MatchResult().fail("a bias input, or the mean / inverse std / sum read elsewhere")
        lookup = skip.producer()
        tables = [table_a, table_b, lookup.inputs[0] if lookup is not None and lookup.op_type == "Gather" else None]
        if not all(_is_table(t) for t in tables) or len({constant_array(t).shape[1] for t in tables}) != 1:
            return pattern.MatchResult().fail("not three lookups of constant tables of one width")
        return pattern.MatchResult()

    def rewrite(self, op, skip, gamma, beta, pair, out, **_):
        epsilon = out.producer().attributes.get_float("epsilon", 1e-12)
        return op.LayerNormalization(op.Add(pair, skip), gamma, beta, axis=-1, epsilon=epsilon)


def embed_layer_norm_rules() -> list[pattern.RewriteRule]:
    # The first five put Keras' lookups, torch's folded positions and a fused tool's SkipLayerNormalization
    # into the plain Gather + LayerNorm form the fusion matches.
    return [
        WrappedIdsLookup.rule(),
        SlicedPositionTable.rule(),
        FoldedPositionLookup.rule(with_segment=True),
        FoldedPositionLookup.rule(with_segment=False),
        EmbeddingSkipLayerNorm.rule(),
        *(EmbedLayerNorm.rule(with_segment=segment, keep_sum=keep) for keep in (False, True) for segment in (True, False)),
    ]
