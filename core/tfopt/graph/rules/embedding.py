"""EmbedLayerNormalization: word + (segment) + position embedding lookups and their LayerNorm, in one op.

Position (and, for RoBERTa, segment) ids are often computed in the graph: a slice
of a buffer, or a cumsum over the padding mask. Rather than assume 0..S-1, the
rule passes whatever index tensor the graph computed as ``position_ids``, so the
fused op is exact for every variant.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from ..values import MS_DOMAIN, constant_array, int32_of, is_constant_vector


def _is_table(value, width: int | None = None) -> bool:
    array = constant_array(value)
    return array is not None and array.ndim == 2 and (width is None or array.shape[1] == width)


class EmbedLayerNorm(pattern.RewriteRuleClassBase):
    """LN(Gather(word, ids) [+ Gather(segment, seg)] + Gather(position, pos)) -> EmbedLayerNormalization."""

    def __init__(self, with_segment: bool):
        super().__init__(name="EmbedLayerNorm" if with_segment else "EmbedLayerNormNoSegment")
        self.with_segment = with_segment

    def pattern(self, op, word_table, ids, segment_table, segment_ids, position_table, position_ids, gamma, beta):
        total = op.Gather(word_table, ids, _outputs=["word"])
        if self.with_segment:
            total = op.Add(total, op.Gather(segment_table, segment_ids, _outputs=["segment"]))
        total = op.Add(total, op.Gather(position_table, position_ids, _outputs=["position"]))
        return op.LayerNormalization(total, gamma, beta, _outputs=["out"])

    def check(self, context, word_table, ids, position_table, gamma, beta, out, word, position, **kw):
        width = constant_array(word_table).shape[1] if _is_table(word_table) else None
        if width is None or not _is_table(position_table, width):
            return False
        gathers = [word.producer(), position.producer()]
        if self.with_segment:
            if not _is_table(kw["segment_table"], width):
                return False
            gathers.append(kw["segment"].producer())
        if any(g.attributes.get_int("axis", 0) != 0 for g in gathers):
            return False
        if not (is_constant_vector(gamma, width) and is_constant_vector(beta, width)):
            return False
        graph_inputs = {id(v) for v in context.graph_or_function.inputs}
        # The word ids must be what the user feeds (possibly cast), not a computed tensor.
        traced = ids
        while traced.producer() is not None and traced.producer().op_type == "Cast":
            traced = traced.producer().inputs[0]
        if graph_inputs and id(traced) not in graph_inputs:
            return False
        return out.producer().attributes.get_int("axis", -1) == -1

    def rewrite(self, op, word_table, ids, position_table, position_ids, gamma, beta, out, **kw):
        epsilon = out.producer().attributes.get_float("epsilon", 1e-5)
        segment_ids = int32_of(op, kw["segment_ids"]) if self.with_segment else None
        segment_table = kw["segment_table"] if self.with_segment else None
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
