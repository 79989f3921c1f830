"""weight_prune's in-place kernel gives the same bytes and counts as the plain numpy it replaced."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from onnxshrink_plugins.weight_prune import _smallest, _Workspace


def reference(array: np.ndarray, fraction: float) -> tuple[np.ndarray, int, int]:
    """The earlier code: a masked copy of 0 over a partition-based mask, counted with count_nonzero."""
    mag = np.abs(array.astype(np.float32)).ravel()
    k = int(round(fraction * mag.size))
    mask = np.zeros(mag.size, bool)
    if k >= mag.size:
        mask[:] = True
    elif k:
        cut = np.partition(mag, k - 1)[k - 1]
        mask = mag < cut
        mask[np.flatnonzero(mag == cut)[: k - int(mask.sum())]] = True
    pruned = array.ravel().copy()
    np.copyto(pruned, 0, where=mask)
    return pruned.reshape(array.shape), int(np.count_nonzero(array)), int(np.count_nonzero(pruned))


AWKWARD = np.array(
    [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45, 3.0, -3.0, 0.5, 0.5, -0.5, 2.0, 1e-40, 7.0]
)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, ml_dtypes.bfloat16])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.8, 0.95, 0.99, 1.0])
def test_same_bytes_and_counts_as_reference(dtype, fraction):
    rng = np.random.default_rng(0)
    values = np.concatenate([AWKWARD, rng.integers(-3, 4, 64) / 2, rng.standard_normal(48)])
    array = rng.permutation(values).astype(dtype).reshape(8, -1)
    expected, before, after = reference(array, fraction)
    work = _Workspace(array.size)
    got = array.copy()
    counts = work.prune(got, lambda mag: _smallest(mag, fraction, work))
    assert got.tobytes() == expected.tobytes()
    assert counts == (before, after)
