"""Integer quantization building blocks every quantizing method shares.

- :func:`quantize` turns a float tensor into integers with scales (and zero points when asymmetric):
  per-tensor, per-channel (one scale per index of ``axis``) or block-wise (``block_size`` consecutive
  elements along ``axis`` share a scale), at 2 to 8 bits. :meth:`QuantizedTensor.dequantize` is the
  numpy reference of what onnxruntime computes: ``(q - zero_point) * scale`` in float32.
- :func:`storage_chain` writes a quantized tensor as integer initializers plus a small
  Cast → Sub → Mul chain (sub-byte values packed into uint8 and unpacked with Div/Mod) that onnxruntime
  folds back to a float weight when it creates the session: a smaller file at no run-time cost.
- :func:`dequantize_linear` writes it as an ONNX ``DequantizeLinear`` node (what int8/int4 kernels and
  onnxruntime's DequantizeLinear → MatMul → MatMulNBits fusion read).
- :func:`matmul_nbits` writes a MatMul with a block-quantized weight as onnxruntime's
  ``com.microsoft::MatMulNBits`` directly, with its ``accuracy_level`` chosen in the file.
- :func:`required_opset`, :func:`model_opset` and :func:`upgrade_opset` keep the two forms legal:
  per-axis DequantizeLinear needs opset 13, block_size and 4-bit types opset 21, 2-bit types opset 25.
- :func:`quantization_markers` tells whether a model is already quantized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.ir.opset import DEFAULT_DOMAINS
from onnxshrink.ir.tensors import element_count
from onnxshrink.ir.walk import has_subgraph, iter_graphs, unique_name
from onnxshrink.toolkit.encoding.bits import or_lanes, pack_bits

# Ops whose presence means a model already holds quantized tensors (ONNX and onnxruntime contrib ops).
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
        "MatMulNBits",
        "MatMulBnb4",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "QGemm",
        "QAttention",
        "QOrderedMatMul",
        "GatherBlockQuantized",
    }
)


INTEGER_STORAGE_TYPES = frozenset(
    {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2, TensorProto.UINT2}
)


def quant_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range: symmetric is signed and restricted (int8: -127..127), asymmetric unsigned (0..255)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8 (got {bits})")
    if symmetric:
        top = 2 ** (bits - 1) - 1
        return -top, top
    return 0, 2**bits - 1


@dataclass
class QuantizedTensor:
    """Integers plus scales (and zero points) that stand for a float tensor.

    ``values`` has the float tensor's shape (int8 when signed, uint8 when unsigned, one value per
    element whatever ``bits`` is). ``scale`` is a scalar (per-tensor), 1-D along ``axis``
    (per-channel), or, with ``block_size``, the tensor's shape with ``ceil(n / block_size)`` along
    ``axis`` (block-wise), exactly as ONNX DequantizeLinear lays them out. ``zero_point`` has the shape
    and signedness of ``scale``/``values``; it is None when symmetric.
    """

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    bits: int
    axis: int | None = None
    block_size: int | None = None

    @property
    def signed(self) -> bool:
        return self.values.dtype == np.int8

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    @property
    def granularity(self) -> str:
        if self.block_size:
            return "blockwise"
        return "per-tensor" if self.axis is None else "per-channel"

    def describe(self) -> str:
        """e.g. ``int4 symmetric blockwise(axis=0, block=32)``."""
        kind = f"{'int' if self.signed else 'uint'}{self.bits} {'symmetric' if self.symmetric else 'asymmetric'}"
        if self.block_size:
            return f"{kind} blockwise(axis={self.axis}, block={self.block_size})"
        return f"{kind} {self.granularity}" + ("" if self.axis is None else f"(axis={self.axis})")

    def full(self, params: np.ndarray) -> np.ndarray:
        """Scale-shaped ``params`` broadcast against ``values``."""
        return _expand(params, self.values.shape, self.axis, self.block_size)

    def dequantize(self) -> np.ndarray:
        """The float32 tensor these integers stand for: ``(q - zero_point) * scale``."""
        q = self.values.astype(np.float32)
        if np.result_type(q, self.scale) != np.float32:
            q = q - self.full(self.zero_point).astype(np.float32) if self.zero_point is not None else q
            return q * self.full(self.scale)
        # in place, parameters broadcast per block instead of repeated to the tensor's shape
        if self.zero_point is not None:
            _blockwise(np.subtract, q, self.zero_point.astype(np.float32), self.axis, self.block_size)
        return _blockwise(np.multiply, q, self.scale, self.axis, self.block_size)

    def max_abs_error(self, reference: np.ndarray) -> float:
        """Largest ``|dequantize() - reference|`` (``reference`` read flat, as float32)."""
        flat = self.dequantize().reshape(-1)
        np.subtract(flat, np.asarray(reference, dtype=np.float32).reshape(-1), out=flat)
        return float(np.max(np.abs(flat, out=flat))) if flat.size else 0.0

    def stored_bytes(self) -> int:
        """Bytes of packed values, scales and zero points."""
        values = -(-self.values.size * self.bits // 8)
        params = self.scale.size * self.scale.itemsize
        if self.zero_point is not None:
            params += -(-self.zero_point.size * self.bits // 8)
        return values + params


def _blocks(array: np.ndarray, axis: int, block_size: int) -> np.ndarray:
    """``array`` as (before axis, blocks, block_size, after axis): a view, or a zero-padded copy when
    the axis is not a whole number of blocks (zeros change neither max|w| nor a range holding 0)."""
    pre, n = math.prod(array.shape[:axis]), array.shape[axis]
    flat = array.reshape(pre, n, -1)
    blocks = -(-n // block_size)
    if n % block_size:
        padded = np.zeros((pre, blocks * block_size, flat.shape[2]), dtype=array.dtype)
        padded[:, :n] = flat
        flat = padded
    return flat.reshape(pre, blocks, block_size, -1)


def _unblock(grouped: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Inverse of :func:`_blocks`: the tensor of ``shape`` (padding dropped)."""
    pre, blocks, block, post = grouped.shape
    return grouped.reshape(pre, blocks * block, post)[:, : shape[axis]].reshape(shape)


def _param_view(params: np.ndarray, shape: tuple[int, ...], axis: int | None, block_size: int | None) -> np.ndarray:
    """Scale-shaped ``params`` shaped to broadcast against the values (per block: against :func:`_blocks`)."""
    if axis is None or not block_size:
        return _expand(params, shape, axis, None)
    return params.reshape(math.prod(shape[:axis]), params.shape[axis], 1, -1)


def _blockwise(op, values: np.ndarray, params: np.ndarray, axis: int | None, block_size: int | None) -> np.ndarray:
    """``op(values, params)`` written into ``values`` (float32, C-contiguous), params broadcast per group."""
    if axis is not None and block_size and values.shape[axis] % block_size:  # ragged last block
        return op(values, _expand(params, values.shape, axis, block_size), out=values)
    target = _blocks(values, axis, block_size) if axis is not None and block_size else values
    op(target, _param_view(params, values.shape, axis, block_size), out=target)
    return values


def _stats(w: np.ndarray, axis: int | None, block_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of each group, in the scale's layout. Two reductions, no temporary |w|."""
    if axis is None:
        return np.min(w), np.max(w)
    if not block_size:
        others = tuple(i for i in range(w.ndim) if i != axis)
        return np.min(w, axis=others), np.max(w, axis=others)
    grouped = _blocks(w, axis, block_size)
    layout = (*w.shape[:axis], grouped.shape[1], *w.shape[axis + 1 :])
    return np.min(grouped, axis=2).reshape(layout), np.max(grouped, axis=2).reshape(layout)


def _expand(params: np.ndarray, shape: tuple[int, ...], axis: int | None, block_size: int | None) -> np.ndarray:
    if axis is None:
        return params
    if not block_size:
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return params.reshape(view)
    return np.repeat(params, block_size, axis=axis)[tuple(slice(0, d) for d in shape)]


def quantize(
    array: np.ndarray,
    bits: int = 8,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    block_size: int | None = None,
) -> QuantizedTensor:
    """Quantize a float tensor: min-max scales per tensor, per ``axis`` or per block along ``axis``.

    Symmetric: signed values in ``[-(2^(b-1)-1), 2^(b-1)-1]``, ``scale = max|w| / qmax``, no zero point.
    Asymmetric: unsigned values in ``[0, 2^b-1]`` over ``[min(w, 0), max(w, 0)]`` with a zero point.
    Rounding is half-to-even, as ONNX QuantizeLinear. A group of zeros gets scale 1.
    """
    w = np.asarray(array, dtype=np.float32)
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be positive (got {block_size})")
    if block_size and axis is None:
        raise ValueError("block-wise quantization needs an axis")
    if axis is not None:
        if not -w.ndim <= axis < w.ndim:
            raise ValueError(f"axis {axis} is out of range for a tensor of rank {w.ndim}")
        axis %= w.ndim
    qmin, qmax = quant_range(bits, symmetric)
    low, high = _stats(w, axis, block_size)
    if symmetric:
        scale = np.maximum(high, -low).astype(np.float32) / np.float32(qmax)  # max|w|
        scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
        q = _scaled(w, scale, None, axis, block_size)
        return QuantizedTensor(
            _rounded(q, qmin, qmax, np.int8, w.shape, axis, block_size), scale, None, bits, axis, block_size
        )
    low = np.minimum(np.asarray(low, np.float32), 0).astype(np.float32)
    high = np.maximum(np.asarray(high, np.float32), 0).astype(np.float32)
    scale = ((high - low) / np.float32(qmax - qmin)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    zero_point = np.clip(np.round(qmin - low / scale), qmin, qmax).astype(np.uint8)
    q = _scaled(w, scale, zero_point.astype(np.float32), axis, block_size)
    return QuantizedTensor(
        _rounded(q, qmin, qmax, np.uint8, w.shape, axis, block_size), scale, zero_point, bits, axis, block_size
    )


def _scaled(
    w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int | None, block_size: int | None
) -> np.ndarray:
    """``round(w / scale) (+ zero_point)`` in one float32 buffer (blocked layout when ``block_size``)."""
    grouped = _blocks(w, axis, block_size) if axis is not None and block_size else w
    q = np.divide(grouped, _param_view(scale, w.shape, axis, block_size))
    np.round(q, out=q)  # half to even, as ONNX QuantizeLinear
    if zero_point is not None:
        np.add(q, _param_view(zero_point, w.shape, axis, block_size), out=q)
    return q


def _rounded(
    q: np.ndarray, qmin: int, qmax: int, dtype, shape: tuple[int, ...], axis: int | None, block_size: int | None
) -> np.ndarray:
    np.clip(q, qmin, qmax, out=q)
    if axis is not None and block_size:
        q = _unblock(q, shape, axis)
    return q.astype(dtype)


def _const(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def storage_chain(
    qt: QuantizedTensor,
    output: str,
    taken: set[str],
    *,
    dtype: int = TensorProto.FLOAT,
    shape: tuple[int, ...] | None = None,
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes and initializers that compute ``output`` (the dequantized tensor) from stored integers.

    8-bit values are stored as int8/uint8; narrower ones packed into uint8 and unpacked with
    Reshape → Div → Mod. Then Cast → Sub(zero point) → Mul(scale), block scales repeated along the
    axis with Reshape → Expand → Reshape (→ Slice), an optional Reshape to ``shape``, and a Cast to
    ``dtype`` when that is not float32. Needs opset 10 (see :func:`required_opset`). Every input is constant, so
    onnxruntime folds the chain into one float initializer when
    it creates the session (verified on ORT 1.32 CPU: the session holds a plain MatMul or Conv).
    The result equals ``qt.dequantize()`` (cast to ``dtype``) bit for bit.
    """
    base = output
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []

    def name(suffix: str) -> str:
        return unique_name(taken, f"{base}_{suffix}")

    def node(op: str, inputs: list[str], suffix: str, **attrs) -> str:
        out = name(suffix)
        nodes.append(helper.make_node(op, inputs, [out], name=unique_name(taken, f"{base}_{suffix}_node"), **attrs))
        return out

    def init(suffix: str, array: np.ndarray) -> str:
        tensor_name = name(suffix)
        inits.append(_const(tensor_name, array))
        return tensor_name

    if qt.bits == 8:
        current = init("quantized", qt.values)
        zero_point = qt.zero_point
    else:
        offset = 2 ** (qt.bits - 1) if qt.signed else 0  # packed values are unsigned
        packed = pack_bits((qt.values.astype(np.int16) + offset).astype(np.uint8), qt.bits)
        per_byte = 8 // qt.bits
        current = init("packed", packed)
        current = node("Cast", [current], "int32", to=TensorProto.INT32)
        current = node("Reshape", [current, init("lanes_shape", np.array([-1, 1], np.int64))], "lanes")
        divisors = np.array([2 ** (qt.bits * i) for i in range(per_byte)], np.int32)
        current = node("Div", [current, init("shifts", divisors)], "shifted")
        current = node("Mod", [current, init("modulus", np.array(2**qt.bits, np.int32))], "unpacked")
        if packed.size * per_byte != qt.values.size:
            current = node("Reshape", [current, init("flat_shape", np.array([-1], np.int64))], "flat")
            current = node(
                "Slice",
                [current, init("start", np.array([0], np.int64)), init("end", np.array([qt.values.size], np.int64))],
                "trimmed",
            )
        current = node("Reshape", [current, init("values_shape", np.array(qt.values.shape, np.int64))], "values")
        zero_point = qt.zero_point if qt.zero_point is not None else (np.array(offset, np.uint8) if offset else None)
    current = node("Cast", [current], "float", to=TensorProto.FLOAT)

    def expand_blocks(params: str, suffix: str) -> str:
        """Repeat each block's parameter block_size times along the axis (Reshape → Expand → Reshape → Slice)."""
        grouped = list(qt.scale.shape)
        axis, n = qt.axis, qt.values.shape[qt.axis]
        lifted = init(f"{suffix}_lifted_shape", np.array(grouped[: axis + 1] + [1] + grouped[axis + 1 :], np.int64))
        spread = init(
            f"{suffix}_spread_shape", np.array(grouped[: axis + 1] + [qt.block_size] + grouped[axis + 1 :], np.int64)
        )
        merged = list(grouped)
        merged[axis] = grouped[axis] * qt.block_size
        out = node("Reshape", [params, lifted], f"{suffix}_lifted")
        out = node("Expand", [out, spread], f"{suffix}_spread")
        out = node("Reshape", [out, init(f"{suffix}_merged_shape", np.array(merged, np.int64))], f"{suffix}_repeated")
        if merged[axis] != n:
            bounds = [
                init(f"{suffix}_{k}", np.array([v], np.int64)) for k, v in (("start", 0), ("end", n), ("axis", axis))
            ]
            out = node("Slice", [out, *bounds], f"{suffix}_full")
        return out

    if zero_point is not None:
        zp = init("zero_point", _scale_layout(qt, zero_point) if zero_point.ndim else zero_point)
        if qt.block_size and zero_point.ndim:
            zp = expand_blocks(zp, "zero_point")
        zp = node("Cast", [zp], "zero_point_float", to=TensorProto.FLOAT)
        current = node("Sub", [current, zp], "centered")
    scale = init("scale", _scale_layout(qt, qt.scale))
    if qt.block_size:
        scale = expand_blocks(scale, "scale")
    last_shape = shape is not None and tuple(shape) != qt.values.shape
    final_cast = dtype != TensorProto.FLOAT
    if not last_shape and not final_cast:
        nodes.append(helper.make_node("Mul", [current, scale], [output], name=unique_name(taken, f"{base}_dequantize")))
        return nodes, inits
    current = node("Mul", [current, scale], "dequantized")
    if last_shape and final_cast:
        current = node("Reshape", [current, init("shape", np.array(shape, np.int64))], "reshaped")
        nodes.append(helper.make_node("Cast", [current], [output], name=unique_name(taken, f"{base}_cast"), to=dtype))
    elif last_shape:
        nodes.append(
            helper.make_node(
                "Reshape",
                [current, init("shape", np.array(shape, np.int64))],
                [output],
                name=unique_name(taken, f"{base}_reshape"),
            )
        )
    else:
        nodes.append(helper.make_node("Cast", [current], [output], name=unique_name(taken, f"{base}_cast"), to=dtype))
    return nodes, inits


def _scale_layout(qt: QuantizedTensor, params: np.ndarray) -> np.ndarray:
    """Per-channel parameters reshaped to broadcast against the values (blocks and scalars as they are)."""
    if qt.axis is not None and not qt.block_size:
        return qt.full(params)
    return params


_DQ_TYPES = {
    (8, True): np.int8,
    (8, False): np.uint8,
    (4, True): ml_dtypes.int4,
    (4, False): ml_dtypes.uint4,
    (2, True): ml_dtypes.int2,
    (2, False): ml_dtypes.uint2,
}


def dequantize_linear(
    qt: QuantizedTensor, output: str, taken: set[str]
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """A DequantizeLinear node computing ``output`` from typed integer initializers (int8, int4, int2).

    Needs the opset :func:`required_opset` gives. Bits other than 8, 4 and 2 are stored in the next
    wider type.
    """
    bits = 8 if qt.bits > 4 else 4 if qt.bits > 2 else 2
    np_type = _DQ_TYPES[(bits, qt.signed)]
    quantized = unique_name(taken, f"{output}_quantized")
    scale = unique_name(taken, f"{output}_scale")
    inits = [_const(quantized, qt.values.astype(np_type)), _const(scale, qt.scale)]
    inputs = [quantized, scale]
    if qt.zero_point is not None:
        zp_name = unique_name(taken, f"{output}_zero_point")
        inits.append(_const(zp_name, qt.zero_point.astype(np_type)))
        inputs.append(zp_name)
    attrs = {}
    if qt.axis is not None:
        attrs["axis"] = qt.axis
    if qt.block_size:
        attrs["block_size"] = qt.block_size
    node = helper.make_node(
        "DequantizeLinear", inputs, [output], name=unique_name(taken, f"{output}_DequantizeLinear"), **attrs
    )
    return [node], inits


MATMULNBITS_BITS = (2, 4, 8)


def matmul_nbits_reason(qt: QuantizedTensor) -> str | None:
    """Why ``qt`` cannot be written as onnxruntime's MatMulNBits, or None when it can."""
    if qt.values.ndim != 2 or qt.axis != 0 or not qt.block_size:
        return "MatMulNBits takes a 2-D (K, N) weight quantized in blocks along K (axis 0)"
    if qt.bits not in MATMULNBITS_BITS:
        return f"MatMulNBits takes 2, 4 or 8 bits, not {qt.bits}"
    if qt.block_size < 16 or qt.block_size & (qt.block_size - 1):
        return f"MatMulNBits needs a block size that is a power of two of at least 16, not {qt.block_size}"
    return None


def matmul_nbits(
    qt: QuantizedTensor,
    activation: str,
    output: str,
    taken: set[str],
    *,
    bias: str | None = None,
    accuracy_level: int = 0,
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """A ``com.microsoft::MatMulNBits`` node computing ``activation @ W (+ bias)`` from block-quantized W.

    ``qt`` holds W (K, N) quantized in blocks along K (see :func:`matmul_nbits_reason`). Values are
    stored unsigned, packed low bits first, as B[N, blocks, block_size * bits / 8]; a symmetric
    weight omits zero points (the kernel's default, 2^(bits-1), is the offset used); ``accuracy_level``
    0 computes in float32, 4 quantizes activations to int8 inside the kernel. The model must import
    the ``com.microsoft`` domain (onnxruntime only).
    """
    reason = matmul_nbits_reason(qt)
    if reason:
        raise ValueError(reason)
    k, n = qt.values.shape
    block = qt.block_size
    blocks = -(-k // block)
    offset = 2 ** (qt.bits - 1) if qt.signed else 0
    zero = offset if qt.zero_point is None else 0
    # uint8 arithmetic wraps: int8 values plus the offset land on 0 .. 2^bits - 1, as in int16
    unsigned = np.empty((blocks * block, n), dtype=np.uint8)
    np.add(qt.values.view(np.uint8), np.uint8(offset), out=unsigned[:k])
    unsigned[k:] = zero if qt.zero_point is None else qt.zero_point[-1]  # padding rows dequantize to 0
    # Pack along K first (contiguous rows), then transpose the packed bytes: a fraction of the data
    # moved with strided access, and no power-of-two row stride to thrash the cache.
    packed_rows = or_lanes(unsigned.reshape(-1, 8 // qt.bits, n), qt.bits)
    packed = np.ascontiguousarray(packed_rows.T).reshape(n, blocks, -1)  # block_size * bits is a whole number of bytes
    names = {key: unique_name(taken, f"{output}_{key}") for key in ("packed", "scales", "zero_points")}
    inits = [_const(names["packed"], packed), _const(names["scales"], qt.scale.T.reshape(-1).astype(np.float32))]
    inputs = [activation, names["packed"], names["scales"]]
    if qt.zero_point is not None:
        per_byte = 8 // qt.bits  # each column's zero points start on a fresh byte
        columns = np.zeros((n, -(-blocks // per_byte) * per_byte), dtype=np.uint8)
        columns[:, :blocks] = qt.zero_point.T
        zp = pack_bits(columns, qt.bits)
        inits.append(_const(names["zero_points"], zp))
        inputs.append(names["zero_points"])
    if bias:
        inputs += [""] * (5 - len(inputs)) + [bias]
    attrs = {"K": k, "N": n, "bits": qt.bits, "block_size": block}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    node = helper.make_node(
        "MatMulNBits",
        inputs,
        [output],
        name=unique_name(taken, f"{output}_MatMulNBits"),
        domain="com.microsoft",
        **attrs,
    )
    return [node], inits


def required_opset(qt: QuantizedTensor, form: str = "dequantize_linear") -> int:
    """Lowest default-domain opset that can hold ``qt`` in ``form`` (``dequantize_linear`` or ``storage``)."""
    if form == "storage":
        return 6 if qt.bits == 8 and not qt.block_size else 10
    if qt.bits <= 2:
        return 25
    if qt.bits <= 4 or qt.block_size:
        return 21
    return 10 if qt.axis is None else 13


def quantization_markers(model: onnx.ModelProto) -> list[str]:
    """What shows that ``model`` is already quantized: quantized ops, and integer weights turned into
    float by constant subgraphs (the storage chains of :func:`storage_chain`, packed or not)."""
    markers: list[str] = []
    for g, _ in iter_graphs(model.graph):
        # tensors computed from constants only, and whether an integer weight is among those constants
        from_integers = {t.name: t.data_type in INTEGER_STORAGE_TYPES and element_count(t) >= 16 for t in g.initializer}
        for node in g.node:
            label = node.name or (node.output[0] if node.output else node.op_type)
            if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
                prefix = "" if node.domain in DEFAULT_DOMAINS else f"{node.domain}::"
                markers.append(f"{prefix}{node.op_type} node {label!r}")
                continue
            sources = [name for name in node.input if name]
            if node.op_type == "Constant" or (
                sources and all(name in from_integers for name in sources) and not has_subgraph(node)
            ):
                integer = any(from_integers[name] for name in sources)
                target = next((a.i for a in node.attribute if a.name == "to"), None)
                if (
                    node.op_type == "Cast"
                    and integer
                    and target in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
                ):
                    markers.append(f"integer weight cast to float by {label!r}")
                    integer = False  # one marker per chain
                from_integers.update({out: integer for out in node.output})
    return markers
