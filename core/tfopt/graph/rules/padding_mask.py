"""Is this additive encoder mask exactly "key padding"? Asked by running it, before a fusion assumes so.

``MultiHeadAttention`` / ``Attention`` with the raw 2-D mask let every query see key ``j``
iff ``attention_mask[b, j] != 0``. Exporters build the additive term many ways
(``(1 - m) * -10000``, ``Where(m, 0, finfo.min)`` over a 4-D expansion, ``+ 1e-10``), and
one that reads the same input yet means something else (inverted, or with a causal part,
as a BERT used as a decoder has) looks the same to a pattern. So the term's subgraph is
cut out and run on ONNX Runtime for several (batch, sequence) shapes with right, left and
holed padding: in each row, the kept keys must add one and the same number (softmax does
not see a constant), the dropped ones at least 1e4 less (MultiHeadAttention's own mask
value). Rows of padded queries are free: nothing reads them.

The cutting and sizing is :mod:`causal_mask`'s (the decoder rule's check of its mask).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .causal_mask import DROP_LIMIT, MaskSizer, ShapeOf, mask_session, numpy_type

PROBE_SHAPES = ((1, 1), (1, 6), (3, 5), (4, 7))
KEEP_SPREAD = 1e-5  # how much the kept keys of one row may differ


def _paddings(batch: int, sequence: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row 0 full, the others right-padded, left-padded, or holed (each keeps one token at least)."""
    masks = []
    for style in ("right", "left", "holes"):
        mask = np.ones((batch, sequence), np.int64)
        for row in range(1, batch):
            cut = int(rng.integers(1, sequence)) if sequence > 1 else 1
            if style == "right":
                mask[row, cut:] = 0
            elif style == "left":
                mask[row, : sequence - cut] = 0
            else:
                mask[row] = rng.integers(0, 2, size=sequence)
                mask[row, int(rng.integers(0, sequence))] = 1
        masks.append(mask)
    return masks


def _compare(result: np.ndarray, padding: np.ndarray) -> str | None:
    batch, sequence = padding.shape
    if result.ndim > 4:
        return f"mask of rank {result.ndim} for 4-D scores"
    try:
        heads = result.shape[1] if result.ndim == 4 else 1
        result = np.broadcast_to(result, (batch, heads, sequence, sequence)).astype(np.float64)
    except ValueError:
        return f"mask of shape {list(result.shape)} does not cover (batch, heads, {sequence}, {sequence})"
    keep = np.broadcast_to(padding[:, None, None, :] != 0, result.shape)
    rows = np.broadcast_to(padding[:, None, :] != 0, result.shape[:-1])  # padded queries' rows are read by no one
    with np.errstate(invalid="ignore"):
        kept = np.where(keep, result, np.nan)
        high, low = np.nanmax(kept, axis=-1)[rows], np.nanmin(kept, axis=-1)[rows]
    if not np.isfinite(high).all() or (high - low > KEEP_SPREAD * (1 + np.abs(high))).any():
        return "the mask does not treat all unpadded keys alike"
    dropped = np.where(keep, -np.inf, result).max(axis=-1)[rows]
    if (dropped > low + DROP_LIMIT).any():
        return "the mask keeps a padded key"
    return None


def key_padding_problem(
    mask: ir.Value, *, model: ir.Model, graph: ir.Graph, mask_input: ir.Value, known: dict[ir.Value, ShapeOf]
) -> str | None:
    """None if adding ``mask`` to the scores masks exactly the keys ``mask_input`` pads; else why not.

    ``known`` maps values of the matched attention to their shape as a function of
    (batch, past, sequence) (past is always 0 here), as for :func:`causal_mask_problem`.
    """
    cut = mask_session(mask, model=model, graph=graph, known=known)
    if isinstance(cut, str):
        return cut
    cone, session = cut
    sizer = MaskSizer(mask_input, None, graph, known)
    rng = np.random.default_rng(0)
    for batch, _, sequence in sizer.fitted((batch, 0, sequence) for batch, sequence in PROBE_SHAPES):
        for padding in _paddings(batch, sequence, rng):
            feed = {}
            for value in cone.inputs:
                if value is mask_input:
                    feed[value.name] = padding.astype(numpy_type(mask_input))
                    continue
                shape = sizer.shape(value, batch, 0, sequence)
                if isinstance(shape, str):
                    return shape
                feed[value.name] = np.zeros(shape, numpy_type(value))
            for value in cone.known:
                feed[value.name] = np.zeros(known[value](batch, 0, sequence), numpy_type(value))
            try:
                (result,) = session.run([mask.name], feed)
            except Exception as exc:
                return f"mask subgraph fails at batch {batch}, length {sequence} ({str(exc).splitlines()[0][:120]})"
            problem = _compare(np.asarray(result), padding)
            if problem:
                return f"{problem} (batch {batch}, length {sequence})"
    return None
