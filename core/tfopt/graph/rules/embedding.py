"""EmbedLayerNormalization: word + (segment) + position embedding lookups and their LayerNorm, in one op.

Position (and, for RoBERTa, segment) ids are often computed in the graph: a slice
of a buffer, or a cumsum over the padding mask. Rather than assume 0..S-1, the
rule passes whatever index tensor the graph computed as ``position_ids``, so the
fused op is exact for every variant.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from ..values import MS_DOMAIN, constant_array, int32_of, is_constant_vector, traced_graph_input


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

    def __init__(self, with_segment: bool):
        super().__init__(name="EmbedLayerNorm" if with_segment else "EmbedLayerNormNoSegment")
        self.with_segment = with_segment

    def pattern(self, op, word_table, ids, table_a, index_a, table_b, index_b, gamma, beta):
        total = op.Add(op.Gather(word_table, ids, _outputs=["word"]), op.Gather(table_a, index_a, _outputs=["lookup_a"]))
        if self.with_segment:
            total = op.Add(total, op.Gather(table_b, index_b, _outputs=["lookup_b"]))
        return op.LayerNormalization(total, gamma, beta, _outputs=["out"])

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
        output, _mask_index = op.EmbedLayerNormalization(
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
            _outputs=2,  # ORT's schema requires the mask_index output; nothing reads it
        )
        return output


def embed_layer_norm_rules() -> list[pattern.RewriteRule]:
    return [EmbedLayerNorm.rule(with_segment=True), EmbedLayerNorm.rule(with_segment=False)]
