"""Calibrated rounding (GPTQ) for weight-only MatMulNBits.

Round-to-nearest rounds every weight on its own. GPTQ (Frantar et al., 2022) rounds a
MatMul's weight ``W`` (K, N) one input row at a time and moves each row's rounding error onto
the rows not yet rounded, weighted by the inverse of ``H = X^T X``, the second moment of the
MatMul's input measured on calibration data, so the MatMul's *output* on such inputs moves
least. On the trained stdlib-gpt2 4-bit (blocks of 32) next-token agreement with fp32 went
from 92.1% (nearest) to 95.9% (docs/benchmark-gpt2.md).

Scales and zero points keep ONNX Runtime's MatMulNBits layout (one per block of
``block_size`` rows of each column, chosen when the block's first row is reached), so
:mod:`tfopt.matmul_nbits` writes GPTQ's codes in the tensors it would otherwise fill by
rounding to nearest, and ONNX Runtime's kernels run them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np

import onnx

from .errors import TfoptError

LAZY_ROWS = 128  # rows rounded before the rest of W is updated in one matrix product (GPTQ's lazy batch)
DAMPING = 0.01  # fraction of H's mean diagonal added to it: keeps the inverse finite for rare input channels

# (session) -> feeds of the fp32 model; the caller knows its model's inputs (e.g. an empty past).
Calibration = Callable[[object], Iterable[dict[str, np.ndarray]]]


def second_moments(
    model_path: str | Path, activations: list[str], calibration: Calibration
) -> tuple[dict[str, np.ndarray], int]:
    """(``X^T X`` (float64, K x K) of each named activation, rows seen) over the calibration feeds.

    The activations become extra outputs of a probe copy written beside ``model_path`` (its
    external data file is shared, not copied) and removed afterwards.
    """
    from .bench import ort_session

    model_path = Path(model_path)
    probe = onnx.load(str(model_path), load_external_data=False)
    present = {output.name for output in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in activations if name not in present)
    probe_path = model_path.with_name(f"{model_path.stem}.probe.onnx")
    onnx.save(probe, str(probe_path))
    try:
        session = ort_session(probe_path)
        moments: dict[str, np.ndarray] = {}
        rows = 0
        for feed in calibration(session):
            values = session.run(activations, feed)
            for name, value in zip(activations, values):
                x = value.reshape(-1, value.shape[-1]).astype(np.float64)
                moments[name] = moments.get(name, 0.0) + x.T @ x
            rows += int(np.prod(values[0].shape[:-1]))  # rows of the first activation, for the notes
    finally:
        probe_path.unlink(missing_ok=True)
    if not rows:
        raise TfoptError("calibration gave no inputs")
    return moments, rows


def _block_grid(block: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) per column of one block, as MatMulNBits dequantizes: (q - zp) * scale.

    The block's range, widened to hold 0 (as ONNX Runtime's quantizer does), in 2^bits - 1 steps.
    """
    top = 2**bits - 1
    low, high = np.minimum(block.min(axis=0), 0.0), np.maximum(block.max(axis=0), 0.0)
    scale = (high - low) / top
    scale = np.where(scale == 0, 1.0, scale)
    return scale, np.clip(np.round(-low / scale), 0, top)


def round_weight(
    weight: np.ndarray, moment: np.ndarray | None, *, bits: int, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes (K, N) uint8, scales (blocks, N), zero points (blocks, N) uint8) for ``weight`` (K, N).

    ``moment`` None is round-to-nearest; otherwise GPTQ's error feedback with ``moment`` as H.
    Asymmetric (a zero point per block), the layout tfopt writes (``precision.INT4_SYMMETRIC``).
    """
    weight = np.array(weight, dtype=np.float64)
    k, n = weight.shape
    blocks = -(-k // block_size)
    if blocks * block_size != k:  # MatMulNBits pads K with zero rows to whole blocks
        weight = np.concatenate([weight, np.zeros((blocks * block_size - k, n))])
    inverse = _upper_inverse_factor(moment, k, blocks * block_size) if moment is not None else None
    top = 2**bits - 1
    codes = np.zeros(weight.shape, dtype=np.uint8)
    scales = np.zeros((blocks, n))
    zeros = np.zeros((blocks, n))
    lazy = max(LAZY_ROWS // block_size, 1) * block_size
    for start in range(0, len(weight), lazy):
        stop = min(start + lazy, len(weight))
        errors = np.zeros((stop - start, n))
        for row in range(start, stop):
            if row % block_size == 0:
                scale, zero = _block_grid(weight[row : row + block_size], bits)
                scales[row // block_size], zeros[row // block_size] = scale, zero
            code = np.clip(np.round(weight[row] / scale) + zero, 0, top)
            codes[row] = code
            if inverse is None:
                continue
            error = (weight[row] - (code - zero) * scale) / inverse[row, row]
            weight[row + 1 : stop] -= np.outer(inverse[row, row + 1 : stop], error)
            errors[row - start] = error
        if inverse is not None and stop < len(weight):
            weight[stop:] -= inverse[start:stop, stop:].T @ errors
    codes[k:] = 0  # the padding rows, as ONNX Runtime's quantizer writes them
    return codes, scales.astype(np.float32), zeros.astype(np.uint8)


def _upper_inverse_factor(moment: np.ndarray, k: int, padded: int) -> np.ndarray:
    """Upper Cholesky factor of (H + damping)^-1, padded rows inert: GPTQ's per-row error weights."""
    hessian = np.eye(padded)
    hessian[:k, :k] = moment
    dead = np.diag(hessian) == 0  # an input channel that never fired: its rows carry no error
    hessian[dead, dead] = 1.0
    hessian += DAMPING * np.mean(np.diag(hessian)) * np.eye(padded)
    try:
        return np.linalg.cholesky(np.linalg.inv(hessian)).T
    except np.linalg.LinAlgError:
        raise TfoptError("calibration data too uniform to invert an input's second moment; round to nearest instead") from None


def pack_matmul_nbits(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, *, bits: int, block_size: int):
    """MatMulNBits' initializers as ONNX Runtime's quantizer writes them, from :func:`round_weight`:
    B (N, blocks, blob) uint8, scales (N, blocks), zero points (N, packed blocks) uint8."""
    padded, n = codes.shape
    blocks = padded // block_size
    per_column = codes.T.reshape(n, blocks, block_size)
    column_scales = np.ascontiguousarray(scales.T)
    if bits == 8:
        return np.ascontiguousarray(per_column), column_scales, np.ascontiguousarray(zeros.T)
    if bits != 4:
        raise TfoptError(f"MatMulNBits packing for {bits} bits is not implemented")
    packed = per_column[..., 0::2] | (per_column[..., 1::2] << 4)  # element 2i low nibble, 2i+1 high
    zero_columns = zeros.T
    if blocks % 2:
        # the unused nibble holds the default zero point (8), as ONNX Runtime's quantizer writes it
        zero_columns = np.concatenate([zero_columns, np.full((n, 1), 8, dtype=np.uint8)], axis=1)
    packed_zeros = zero_columns[:, 0::2] | (zero_columns[:, 1::2] << 4)
    return np.ascontiguousarray(packed), column_scales, np.ascontiguousarray(packed_zeros)
