"""GPTQ (Frantar et al., 2022) on one (out, in) weight matrix, in numpy.

Rounding every weight to its nearest level ignores that the errors of the weights of one output
add up over correlated inputs. GPTQ quantizes the columns (inputs) one at a time and pushes each
column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's reconstruction loss ``||X W^T - X Q^T||^2``, whose Hessian is ``H = 2 X^T X`` over the
calibration inputs X (n, in). The inverse is taken through a Cholesky factor after damping
``H += percdamp * mean(diag H) * I``; updates are applied lazily, ``block`` columns at a time.
With ``act_order`` columns go in order of decreasing ``diag(H)`` (the most active inputs first),
and group scales are then fixed up front from the original weights (static groups) so that each
group stays a contiguous block in the stored tensor.

The quantization grid is :func:`onnxshrink.quantize`'s (min-max, symmetric or asymmetric, per
output row or per group of ``group_size`` inputs), so round-to-nearest and GPTQ differ only in
how they round.
"""

from __future__ import annotations

import numpy as np

from onnxshrink import QuantizedTensor, quant_range, quantize


class Hessian:
    """``2/n * sum x^T x`` over rows of inputs, accumulated feed by feed (float64).

    While there are fewer rows than columns the rows are kept too: the output error of a quantized
    matrix is then measured on them (n x in x out work) rather than through H (in x in x out).
    """

    def __init__(self, columns: int):
        self.matrix = np.zeros((columns, columns), dtype=np.float64)
        self.rows = 0
        self._kept: list[np.ndarray] | None = []

    def add(self, rows: np.ndarray) -> None:
        x = np.asarray(rows, dtype=np.float64)
        self.matrix += x.T @ x
        self.rows += x.shape[0]
        if self._kept is not None:
            self._kept = self._kept + [x] if self.rows < self.matrix.shape[0] else None

    @property
    def h(self) -> np.ndarray:
        return 2.0 * self.matrix / max(self.rows, 1)

    def error(self, w: np.ndarray, qt: QuantizedTensor) -> float:
        """``tr(D H D^T) / tr(W H W^T)`` with D = W - Q: the relative output error on the calibration inputs."""
        w = np.asarray(w, dtype=np.float64)
        d = w - qt.dequantize().astype(np.float64)
        if self._kept:
            x = np.concatenate(self._kept)
            numerator, denominator = float(np.sum((x @ d.T) ** 2)), float(np.sum((x @ w.T) ** 2))
        else:
            numerator, denominator = float(np.sum((d @ self.matrix) * d)), float(np.sum((w @ self.matrix) * w))
        return numerator / denominator if denominator > 0 else 0.0


def rtn(w: np.ndarray, bits: int, symmetric: bool, group_size: int) -> QuantizedTensor:
    """Round-to-nearest on the same grid GPTQ uses (per output row, or per group of inputs)."""
    if group_size:
        return quantize(w, bits, symmetric=symmetric, axis=1, block_size=group_size)
    return quantize(w, bits, symmetric=symmetric, axis=0)


def _row_params(columns: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale and zero point per row of ``columns`` (out, k), exactly as :func:`onnxshrink.quantize`."""
    qt = quantize(columns, bits, symmetric=symmetric, axis=0)
    return qt.scale, qt.zero_point


def _inverse_cholesky(h: np.ndarray, percdamp: float) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse Hessian.

    The damping starts at ``percdamp`` (at least 1e-8) times the mean diagonal and grows tenfold
    until the damped Hessian is positive definite (a rank-deficient H from few calibration rows
    needs it); the mean diagonal is positive because unseen inputs were given a diagonal of 1.
    """
    scale = float(np.mean(np.diag(h)))
    diagonal = np.diag_indices(h.shape[0])
    for step in range(12):
        damped = h.copy()
        damped[diagonal] += max(percdamp, 1e-8) * 10**step * scale
        try:  # an indefinite H has an indefinite inverse: the Cholesky factorization below raises
            inverse = np.linalg.inv(damped)
            del damped
            inverse += inverse.T
            inverse /= 2
            return np.linalg.cholesky(inverse).T
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("the Hessian stays singular after damping")


def gptq(
    w: np.ndarray,
    h: np.ndarray,
    bits: int,
    *,
    symmetric: bool = False,
    group_size: int = 0,
    percdamp: float = 0.01,
    block: int = 128,
    act_order: bool = False,
) -> QuantizedTensor:
    """Quantize ``w`` (out, in) against the Hessian ``h`` (in, in); the result is laid out as (out, in).

    Per output row (``group_size`` 0: scale of shape (out,), axis 0) or in groups of
    ``group_size`` inputs (scale (out, ceil(in / group_size)), axis 1, ``block_size``).
    """
    w = np.asarray(w, dtype=np.float64).copy()
    out, columns = w.shape
    h = np.array(h, dtype=np.float64, copy=True)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0  # inputs never seen: rounded to nearest, no error pushed through them
    qmin, qmax = quant_range(bits, symmetric)

    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(columns)
    w, h = w[:, order], h[np.ix_(order, order)]
    u = _inverse_cholesky(h, percdamp)

    groups = -(-columns // group_size) if group_size else 1
    scales = np.zeros((out, groups), dtype=np.float32)
    zeros = None if symmetric else np.zeros((out, groups), dtype=np.uint8)
    static = not group_size or act_order  # parameters fixed from the original weights up front
    if static:
        original = np.asarray(w[:, np.argsort(order, kind="stable")], dtype=np.float32)
        for g in range(groups):
            span = original[:, g * group_size : (g + 1) * group_size] if group_size else original
            scales[:, g], zp = _row_params(span, bits, symmetric)
            if zeros is not None:
                zeros[:, g] = zp
    if group_size and not act_order:
        block = max(group_size, block // group_size * group_size)  # groups never straddle a block

    codes = np.zeros((out, columns), dtype=np.int16)
    for start in range(0, columns, block):
        end = min(start + block, columns)
        w1 = w[:, start:end].copy()
        err = np.zeros_like(w1)
        u1 = u[start:end, start:end]
        for i in range(end - start):
            column = start + i
            group = order[column] // group_size if group_size else 0
            if not static and column % group_size == 0:
                scales[:, group], zp = _row_params(
                    np.asarray(w1[:, i : i + group_size], dtype=np.float32), bits, symmetric
                )
                if zeros is not None:
                    zeros[:, group] = zp
            scale = scales[:, group].astype(np.float32)
            zp = 0.0 if zeros is None else zeros[:, group].astype(np.float32)
            x = w1[:, i].astype(np.float32)
            q = np.clip(np.round(x / scale) + zp, qmin, qmax)
            codes[:, column] = q
            dequantized = (q - zp) * scale
            e = (w1[:, i] - dequantized) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err[:, i] = e
        w[:, end:] -= err @ u[start:end, end:]

    codes = codes[:, np.argsort(order, kind="stable")]
    values = codes.astype(np.int8 if symmetric else np.uint8)
    if group_size:
        return QuantizedTensor(values, scales, zeros, bits, axis=1, block_size=group_size)
    return QuantizedTensor(values, scales[:, 0], None if zeros is None else zeros[:, 0], bits, axis=0)
