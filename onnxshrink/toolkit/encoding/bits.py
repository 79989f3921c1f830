"""Integer codes narrower than a byte, packed into uint8 lowest bits first (the order ONNX uses for int4).

Code ``i`` occupies bits ``i * bits`` to ``i * bits + bits - 1`` of the stream, bit 0 being the
lowest bit of byte 0. Widths that divide 8 are packed lane by lane (fast, no bit stream in memory);
other widths (3, 5, 6, 7) go through an explicit bit stream.
"""

from __future__ import annotations

import numpy as np


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-wide codes (1 to 8) as an LSB-first bit stream in uint8, padded to 8 codes."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be between 1 and 8 (got {bits})")
    flat = np.asarray(codes).ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] for {bits} bits")
    return _pack(flat.astype(np.uint8), bits, multiple=8)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-wide values (1, 2, 4 or 8), padded to a whole byte only (ONNX int4 layout)."""
    if 8 % bits:
        raise ValueError(f"can pack 1, 2, 4 or 8 bits per value (got {bits})")
    return _pack(np.asarray(values, dtype=np.uint8).reshape(-1), bits, multiple=8 // bits)


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes` and :func:`pack_bits`: the first ``count`` codes as uint8."""
    packed = np.asarray(packed, dtype=np.uint8)
    if 8 % bits == 0:
        shifts = (np.arange(8 // bits, dtype=np.uint8) * bits)[None, :]
        return ((packed.reshape(-1, 1) >> shifts) & np.uint8(2**bits - 1)).ravel()[:count]
    stream = np.unpackbits(packed, bitorder="little")
    usable = stream.size // bits * bits
    lanes = stream[:usable].reshape(-1, bits).astype(np.uint16)
    return (lanes << np.arange(bits, dtype=np.uint16)).sum(axis=1).astype(np.uint8)[:count]


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` (the same as :func:`unpack_codes`)."""
    return unpack_codes(packed, bits, count)


def _pack(flat: np.ndarray, bits: int, multiple: int) -> np.ndarray:
    if flat.size % multiple:
        flat = np.concatenate([flat, np.zeros(multiple - flat.size % multiple, np.uint8)])
    if 8 % bits == 0:
        return or_lanes(flat.reshape(-1, 8 // bits), bits)
    stream = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(stream.ravel(), bitorder="little")


def or_lanes(lanes: np.ndarray, bits: int) -> np.ndarray:
    """Pack axis 1 of ``lanes`` (8 // bits values each) into one byte, lane 0 in the lowest bits."""
    packed = lanes[:, 0].copy()
    for lane in range(1, lanes.shape[1]):  # one pass per lane: an OR-reduce along a short axis is slow
        packed |= lanes[:, lane] << np.uint8(lane * bits)
    return packed
