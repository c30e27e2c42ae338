"""Numerical comparison of an optimized model with its source, shared by every family."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .results import DiffStats, VerifyResult

# Max abs diff allowed on valid positions, per precision. fp32 is the 1e-4 parity bar.
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 0.15, "int8": 0.5, "int4": 0.5}  # bf16: 3 mantissa bits fewer than fp16  # int4: weight-only MatMulNBits (tiny-bert: 9.7e-3)


# Quantized encoders move every value a little, so int8 is judged on what an encoder's output is
# used for: mean-pooled sentence embeddings must point the same way (cosine, worst sequence)
# and order pairs of inputs the same way (rank correlation of their pairwise similarities).
# Measured on all-MiniLM-L6-v2 (docs/qat.md): dynamic int8 min cosine 0.986 on real sentences;
# a corrupted weight scale or a model quantized without per-channel weights falls below.
INT8_POOLED_MIN_COSINE = 0.98
INT8_MIN_RANK_CORRELATION = 0.95


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values, kind="stable"), kind="stable").astype(np.float64)


def pooled_agreement(
    references: Sequence[np.ndarray], actuals: Sequence[np.ndarray], valids: Sequence[np.ndarray]
) -> dict:
    """Mean-pooled (over valid positions) embeddings of every sequence of every case, compared.

    Returns ``min_cosine``/``mean_cosine`` (per sequence), ``rank_correlation`` (Spearman of the
    pairwise cosine similarities between sequences, all cases pooled; 1.0 with fewer than 3
    sequences) and ``top1_agreement`` (each sequence's nearest other sequence is the same).
    """
    pooled_ref, pooled_act = [], []
    for reference, actual, valid in zip(references, actuals, valids):
        weights = np.asarray(valid, dtype=np.float64)[..., None]
        count = np.maximum(weights.sum(1), 1.0)
        pooled_ref.append((np.asarray(reference, np.float64) * weights).sum(1) / count)
        pooled_act.append((np.asarray(actual, np.float64) * weights).sum(1) / count)
    ref, act = np.concatenate(pooled_ref), np.concatenate(pooled_act)
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    ref, act = unit(ref), unit(act)
    cosines = (ref * act).sum(-1)
    cosines = np.where(np.isfinite(cosines), cosines, -1.0)
    result = {"min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()), "sequences": int(len(ref))}
    if len(ref) < 3:
        result.update(rank_correlation=1.0, top1_agreement=1.0)
        return result
    sim_ref, sim_act = ref @ ref.T, act @ act.T
    upper = np.triu_indices(len(ref), 1)
    a, b = _ranks(sim_ref[upper]), _ranks(sim_act[upper])
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    result["rank_correlation"] = float((a * b).sum() / denominator) if denominator else 1.0
    np.fill_diagonal(sim_ref, -np.inf)
    np.fill_diagonal(sim_act, -np.inf)
    result["top1_agreement"] = float((sim_ref.argmax(1) == sim_act.argmax(1)).mean())
    return result


def pooled_problem(agreement: dict) -> str | None:
    """Why quantized embeddings fail the int8 criterion, or None when they pass."""
    if agreement["min_cosine"] < INT8_POOLED_MIN_COSINE:
        return f"pooled-embedding cosine {agreement['min_cosine']:.4f} < {INT8_POOLED_MIN_COSINE} for some input"
    if agreement["rank_correlation"] < INT8_MIN_RANK_CORRELATION:
        return f"rank correlation of pairwise similarities {agreement['rank_correlation']:.3f} < {INT8_MIN_RANK_CORRELATION}"
    return None


# Bin edges of the difference histogram, log10 |actual - reference|: half decades, fixed so runs compare.
HISTOGRAM_LOG10_EDGES = tuple(float(edge) for edge in np.arange(-12.0, 2.01, 0.5))


def _valid_values(reference: np.ndarray, actual: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as flat float64, restricted to the positions where ``valid`` is true."""
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if reference.shape != actual.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs actual {actual.shape}")
    if valid is not None:
        valid = np.asarray(valid).astype(bool)
        valid = valid.reshape(valid.shape + (1,) * (reference.ndim - valid.ndim))
        valid = np.broadcast_to(valid, reference.shape)
        reference, actual = reference[valid], actual[valid]
    return reference.ravel(), actual.ravel()


def diff_histogram(
    references: Sequence[np.ndarray], actuals: Sequence[np.ndarray], valids: Sequence[np.ndarray | None]
) -> dict:
    """How the abs differences of every valid position are spread, for the report's histogram.

    ``counts[i]`` holds differences with log10 between ``log10_edges[i]`` and ``[i + 1]``
    (the outer bins also take what lies beyond them); exact matches and NaN/inf are counted apart.
    """
    edges = np.array(HISTOGRAM_LOG10_EDGES)
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    zeros = nonfinite = total = 0
    for reference, actual, valid in zip(references, actuals, valids):
        reference, actual = _valid_values(reference, actual, valid)
        diff = np.abs(actual - reference)
        total += diff.size
        finite = diff[np.isfinite(diff)]
        nonfinite += diff.size - finite.size
        zeros += int((finite == 0).sum())
        logs = np.clip(np.log10(finite[finite > 0]), edges[0], edges[-1])
        counts += np.histogram(logs, bins=edges)[0]
    return {"log10_edges": edges.tolist(), "counts": counts.tolist(), "zeros": zeros, "nonfinite": nonfinite, "total": total}


def diff_stats(reference: np.ndarray, actual: np.ndarray, valid: np.ndarray | None = None) -> DiffStats:
    """Abs/rel differences of ``actual`` against ``reference`` over positions where ``valid`` is true.

    ``valid`` broadcasts against the leading dims (e.g. a (batch, seq) attention mask
    for (batch, seq, hidden) outputs): padded positions carry no meaning and are skipped.
    NaNs in ``actual`` are counted and make max_abs infinite.
    """
    reference, actual = _valid_values(reference, actual, valid)
    nan_count = int(np.isnan(actual).sum())
    if reference.size == 0:
        return DiffStats(0.0, 0.0, 0.0, 0.0, 0.0, nan_count)
    abs_diff = np.abs(actual - reference)
    if nan_count:
        abs_diff = np.where(np.isnan(abs_diff), np.inf, abs_diff)
    rel_diff = abs_diff / np.maximum(np.abs(reference), 1e-6)
    p50, p90, p99 = np.percentile(abs_diff, [50, 90, 99])
    return DiffStats(
        max_abs=float(abs_diff.max()),
        p50_abs=float(p50),
        p90_abs=float(p90),
        p99_abs=float(p99),
        max_rel=float(rel_diff.max()),
        nan_count=nan_count,
    )


def merge_stats(stats: Sequence[DiffStats]) -> DiffStats:
    """Worst case over cases (percentiles: the worst case's value, a conservative bound)."""
    return DiffStats(
        max_abs=max(s.max_abs for s in stats),
        p50_abs=max(s.p50_abs for s in stats),
        p90_abs=max(s.p90_abs for s in stats),
        p99_abs=max(s.p99_abs for s in stats),
        max_rel=max(s.max_rel for s in stats),
        nan_count=sum(s.nan_count for s in stats),
    )


def run_tolerance(ctx, tolerances: dict[str, float]) -> tuple[str, float]:
    """(precision, tolerance) of a run: ``--precision`` checked against the adapter's ``tolerances``
    table, ``--option tolerance=X`` overriding its entry; an unknown precision is a one-line error."""
    from .errors import TfoptError

    precision = ctx.option("precision", "fp32")
    if precision not in tolerances:
        raise TfoptError(f"unknown precision {precision!r}; known: {', '.join(tolerances)}")
    return precision, float(ctx.option("tolerance", tolerances[precision]))


def compare_cases(
    references: Sequence[np.ndarray],
    actuals: Sequence[np.ndarray],
    *,
    valids: Sequence[np.ndarray | None] | None = None,
    labels: Sequence[dict] | None = None,
    precision: str = "fp32",
    reference_name: str = "source",
    tolerance: float | None = None,
) -> VerifyResult:
    """Compare per-case outputs and decide pass/fail against the precision's tolerance."""
    if not references:
        raise ValueError("no verification cases")
    tolerance = TOLERANCES[precision] if tolerance is None else tolerance
    valids = valids or [None] * len(references)
    labels = labels or [{} for _ in references]
    per_case = [diff_stats(r, a, v) for r, a, v in zip(references, actuals, valids)]
    overall = merge_stats(per_case)
    cases = [dict(label, **vars(s)) for label, s in zip(labels, per_case)]
    passed = overall.nan_count == 0 and overall.max_abs <= tolerance
    return VerifyResult(
        passed=passed,
        tolerance=tolerance,
        precision=precision,
        reference=reference_name,
        overall=overall,
        cases=cases,
        histogram=diff_histogram(references, actuals, valids),
    )
