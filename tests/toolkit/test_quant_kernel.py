"""The quantization kernels (blocks as views, in-place rounding, pack-then-transpose) give the same
bytes as the plain numpy they replaced, kept here as the reference."""

from __future__ import annotations

import numpy as np
import pytest

from onnxshrink.toolkit.encoding.bits import pack_bits
from onnxshrink.toolkit.encoding.integer import QuantizedTensor, matmul_nbits, quant_range, quantize


def ref_expand(params, shape, axis, block_size):
    if axis is None:
        return params
    if not block_size:
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return params.reshape(view)
    return np.repeat(params, block_size, axis=axis)[tuple(slice(0, d) for d in shape)]


def ref_quantize(w, bits, symmetric, axis, block_size):
    w = np.asarray(w, dtype=np.float32)
    qmin, qmax = quant_range(bits, symmetric)
    if axis is None:
        grouped, reduce_axes = w, tuple(range(w.ndim))
    elif not block_size:
        grouped, reduce_axes = w, tuple(i for i in range(w.ndim) if i != axis)
    else:
        moved = np.moveaxis(w, axis, -1)
        n = moved.shape[-1]
        blocks = -(-n // block_size)
        padded = np.zeros((*moved.shape[:-1], blocks * block_size), dtype=w.dtype)
        padded[..., :n] = moved
        grouped, reduce_axes = padded.reshape(*moved.shape[:-1], blocks, block_size), (moved.ndim,)

    def stat(fn):
        out = fn(grouped, axis=reduce_axes)
        return (np.moveaxis(out, -1, axis) if axis is not None and block_size else out).astype(np.float32)

    if symmetric:
        scale = stat(lambda a, axis: np.max(np.abs(a), axis=axis)) / np.float32(qmax)
        scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
        q = np.clip(np.round(w / ref_expand(scale, w.shape, axis, block_size)), qmin, qmax).astype(np.int8)
        return q, scale, None
    low = np.minimum(stat(np.min), 0).astype(np.float32)
    high = np.maximum(stat(np.max), 0).astype(np.float32)
    scale = np.where((s := ((high - low) / np.float32(qmax - qmin)).astype(np.float32)) > 0, s, np.float32(1)).astype(
        np.float32
    )
    zero_point = np.clip(np.round(qmin - low / scale), qmin, qmax).astype(np.uint8)
    full_zp = ref_expand(zero_point, w.shape, axis, block_size).astype(np.float32)
    q = np.clip(np.round(w / ref_expand(scale, w.shape, axis, block_size)) + full_zp, qmin, qmax).astype(np.uint8)
    return q, scale, zero_point


def ref_pack(values, bits):
    flat = np.asarray(values, dtype=np.uint8).ravel()
    per_byte = 8 // bits
    padded = np.zeros(-(-flat.size // per_byte) * per_byte, dtype=np.uint8)
    padded[: flat.size] = flat
    lanes = padded.reshape(-1, per_byte).astype(np.uint16)
    return np.bitwise_or.reduce(lanes << (np.arange(per_byte, dtype=np.uint16) * bits)[None, :], axis=1).astype(
        np.uint8
    )


def ref_dequantize(qt):
    q = qt.values.astype(np.float32)
    if qt.zero_point is not None:
        q = q - ref_expand(qt.zero_point, qt.values.shape, qt.axis, qt.block_size).astype(np.float32)
    return q * ref_expand(qt.scale, qt.values.shape, qt.axis, qt.block_size)


def weights(shape, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 3, shape[-1:])).astype(np.float32)
    w.reshape(-1)[:7] = [0.0, -0.0, 1e-40, -1e-40, 0.5, -0.5, 2.5]  # zeros, denormals, halves (round to even)
    if w.ndim >= 2:
        w[..., 0, :] = 0  # a group of zeros: scale 1
    return w


CASES = [  # shape, axis, block_size
    ((64, 48), None, None),
    ((64, 48), 0, None),
    ((64, 48), 1, None),
    ((64, 48), 0, 16),
    ((70, 48), 0, 16),
    ((48, 70), 1, 32),
    ((6, 5, 3, 3), 0, None),
    ((6, 10, 3, 3), 1, 4),
    ((6, 10, 3, 3), 3, 2),
]


@pytest.mark.parametrize("shape,axis,block_size", CASES)
@pytest.mark.parametrize("bits,symmetric", [(8, True), (8, False), (4, True), (4, False), (2, True), (3, False)])
def test_quantize_and_dequantize_match_reference(shape, axis, block_size, bits, symmetric):
    w = weights(shape)
    qt = quantize(w, bits, symmetric=symmetric, axis=axis, block_size=block_size)
    q, scale, zp = ref_quantize(w, bits, symmetric, axis, block_size)
    assert qt.values.tobytes() == q.tobytes() and qt.values.dtype == q.dtype and qt.values.shape == q.shape
    assert np.asarray(qt.scale).tobytes() == np.asarray(scale).tobytes() and np.shape(qt.scale) == np.shape(scale)
    assert (qt.zero_point is None) == (zp is None)
    if zp is not None:
        assert qt.zero_point.tobytes() == zp.tobytes()
    restored = ref_dequantize(qt)
    assert qt.dequantize().tobytes() == restored.tobytes()
    assert qt.max_abs_error(w) == float(np.max(np.abs(restored.reshape(-1) - w.reshape(-1))))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("count", [0, 1, 7, 64, 1001])
def test_pack_bits_matches_reference(bits, count):
    values = np.random.default_rng(count).integers(0, 2**bits, count).astype(np.uint8)
    assert pack_bits(values, bits).tobytes() == ref_pack(values, bits).tobytes()


@pytest.mark.parametrize(
    "k,bits,symmetric", [(64, 4, True), (70, 4, False), (96, 2, True), (40, 8, False), (128, 2, False)]
)
def test_matmul_nbits_packing_matches_reference(k, bits, symmetric):
    n, block = 24, 16 if bits != 2 else 32
    qt = quantize(weights((k, n), seed=k), bits, symmetric=symmetric, axis=0, block_size=block)
    [node], inits = matmul_nbits(qt, "x", "y", set())
    blocks = -(-k // block)
    offset = 2 ** (bits - 1) if qt.signed else 0
    unsigned = np.full((blocks * block, n), offset if qt.zero_point is None else 0, dtype=np.int16)
    unsigned[:k] = qt.values.astype(np.int16) + offset
    if qt.zero_point is not None:
        unsigned[k:] = qt.zero_point[-1].astype(np.int16)
    expected = ref_pack(unsigned.T.reshape(n, blocks, block).astype(np.uint8), bits).reshape(n, blocks, -1)
    assert inits[0].raw_data == expected.tobytes() and list(inits[0].dims) == list(expected.shape)


def test_dequantize_keeps_a_wider_scale_type():
    qt = QuantizedTensor(np.array([[1, -2]], np.int8), np.array([0.5, 0.25], np.float64), None, 8, 1)
    assert qt.dequantize().dtype == np.float64 and qt.dequantize().tolist() == [[0.5, -0.5]]
