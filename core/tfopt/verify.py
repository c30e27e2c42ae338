"""Numerical comparison of an optimized model with its source, shared by every family."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .results import DiffStats, VerifyResult

# Max abs diff allowed on valid positions, per precision. fp32 is the 1e-4 parity bar.
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.5, "int4": 0.5}  # int4: weight-only MatMulNBits (tiny-bert: 9.7e-3)


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
