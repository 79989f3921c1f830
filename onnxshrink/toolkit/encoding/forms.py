"""Low-bit and sparse weight storage that onnxruntime folds back to float when it creates a session.

A quantized weight (:class:`onnxshrink.QuantizedTensor`, 1 to 8 bits) or a sparse float weight is
written as small integer initializers plus a decode subgraph in front of its readers:

- ``packed``: the integer codes as an LSB-first bit stream in a uint8 initializer (value ``i`` at
  bit ``i * bits``, the order ONNX uses for int4). Widths that divide 8 (1, 2, 4) unpack per byte;
  other widths (3, 5, 6, 7) join each group of ``bits`` bytes (8 values) into one uint64 first
  (Cast → Mul → CumSum → Gather). Each value is isolated with two BitShifts (left, then right) rather
  than BitwiseAnd, which needs opset 18, so the chain runs at opset 11 and up. Then
  Reshape → Cast → affine (code to signed value, minus zero point) → Mul(scale) → Reshape/Cast to
  the weight's shape and type. Blocks that divide their axis are computed in a (..., blocks, block,
  ...) layout where scales broadcast; other blocks repeat their scales with Reshape → Expand →
  Reshape → Slice.
- ``sparse``: a packed 1-bit mask plus the non-zero values (float, or codes packed as above),
  decoded by BitShift → Cast → CumSum → Mul(mask) → Gather: ``N/8 + nnz * value_bytes`` bytes.
  (NonZero/ScatterND would not be folded by onnxruntime.)
- ``dequantize_linear``: the standard form, int8/int4/int2 initializers and a DequantizeLinear
  (block_size at opset 21). onnxruntime does not fold it: it fuses it with MatMul into MatMulNBits
  and runs it on every inference in front of other ops.

Every input of the packed and sparse chains is a constant, so onnxruntime's constant folding turns
each into one float initializer at session creation (verified on onnxruntime 1.32 CPU by saving the
optimized model: it holds a plain initializer), and the values equal ``qt.dequantize()`` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.ir.opset import model_opset
from onnxshrink.ir.tensors import tensor_bytes
from onnxshrink.ir.walk import all_names, unique_name
from onnxshrink.toolkit.encoding.bits import pack_codes
from onnxshrink.toolkit.encoding.integer import QuantizedTensor, dequantize_linear, required_opset
from onnxshrink.toolkit.weights import Use, WeightTensor, replace_weight

PACKED_OPSET = 11  # BitShift, CumSum


FORMS = ("packed", "sparse", "smallest", "dequantize_linear")


PACK_ZERO_POINTS_ABOVE = 256  # bytes saved; below that the unpack nodes cost more than they save


def codes_of(qt: QuantizedTensor) -> tuple[np.ndarray, int, int]:
    """(unsigned codes, multiplier, shift) with ``value = code * multiplier - shift``.

    Unsigned values are their own codes; signed ones are offset by ``2^(bits-1)``; 1-bit signed
    values (-1 and +1, binarized weights) use one bit: ``value = 2 * code - 1``.
    """
    values = qt.values.astype(np.int16)
    if not qt.signed:
        return values.astype(np.uint8), 1, 0
    if qt.bits == 1:
        if not np.all(np.abs(values) == 1):
            raise ValueError("1-bit signed values must be -1 or +1")
        return ((values + 1) // 2).astype(np.uint8), 2, 1
    shift = 2 ** (qt.bits - 1)
    return (values + shift).astype(np.uint8), 1, shift


class _Chain:
    """Collects nodes (unnamed, to keep small models small) and initializers named after the output."""

    def __init__(self, output: str, taken: set[str]):
        self.output, self.taken = output, taken
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []

    def init(self, suffix: str, array: np.ndarray) -> str:
        name = unique_name(self.taken, f"{self.output}_{suffix}")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def dims(self, suffix: str, shape) -> str:
        return self.init(suffix, np.array(list(shape), np.int64))

    def node(self, op: str, inputs: list[str], suffix: str, **attrs) -> str:
        out = unique_name(self.taken, f"{self.output}_{suffix}")
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def unpack(self, packed: np.ndarray, bits: int, count: int, suffix: str, flat: bool = False) -> str:
        """A tensor whose row-major elements are the ``count`` codes stored by :func:`pack_codes` (1-D if ``flat``).

        The packed bytes are stored already shaped as the shifts need them ((bytes, 1), or (groups, bits)).
        """
        if 8 % bits == 0 and bits < 8:
            per_byte = 8 // bits
            out = self.init(suffix, packed.reshape(-1, 1))
            left = np.array([8 - bits - k * bits for k in range(per_byte)], np.uint8)
            out = self.node("BitShift", [out, self.init(f"{suffix}_shl", left)], f"{suffix}_hi", direction="LEFT")
            out = self.node(
                "BitShift",
                [out, self.init(f"{suffix}_shr", np.array(8 - bits, np.uint8))],
                f"{suffix}_lo",
                direction="RIGHT",
            )
        elif bits < 8:  # a group of `bits` bytes holds 8 codes: join it into one 64-bit word first
            out = self.init(suffix, packed.reshape(-1, bits))
            out = self.node("Cast", [out], f"{suffix}_wide", to=TensorProto.INT64)
            out = self.node(
                "Mul", [out, self.init(f"{suffix}_place", 256 ** np.arange(bits, dtype=np.int64))], f"{suffix}_placed"
            )
            # CumSum and not ReduceSum: onnxruntime's int64 ReduceSum loses the bits above 2^53
            out = self.node("CumSum", [out, self.init(f"{suffix}_axis", np.array(1, np.int64))], f"{suffix}_sum")
            out = self.node(
                "Gather", [out, self.init(f"{suffix}_last", np.array([bits - 1], np.int64))], f"{suffix}_word", axis=1
            )
            out = self.node("Cast", [out], f"{suffix}_u64", to=TensorProto.UINT64)
            left = np.array([64 - bits - k * bits for k in range(8)], np.uint64)
            out = self.node("BitShift", [out, self.init(f"{suffix}_shl", left)], f"{suffix}_hi", direction="LEFT")
            out = self.node(
                "BitShift",
                [out, self.init(f"{suffix}_shr", np.array(64 - bits, np.uint64))],
                f"{suffix}_lo",
                direction="RIGHT",
            )
        else:
            out = self.init(suffix, packed)
        trim = -(-count // 8) * 8 != count
        if bits < 8 and (trim or flat):
            out = self.node("Reshape", [out, self.dims(f"{suffix}_flat", [-1])], f"{suffix}_flat")
        if trim:  # drop the padding codes
            out = self.node(
                "Slice", [out, self.dims(f"{suffix}_start", [0]), self.dims(f"{suffix}_end", [count])], f"{suffix}_trim"
            )
        return out

    def dequantize(self, codes: str, qt: QuantizedTensor, mask: str | None = None) -> tuple[str, tuple[int, ...]]:
        """(float32 ``(value - zero_point) * scale``, its shape) from codes of ``qt.values.size`` elements.

        Blocks that divide their axis are computed in a (..., blocks, block_size, ...) layout where the
        parameters broadcast; other blocks repeat their parameters with Expand. ``mask`` (float, in
        ``qt.values``' shape) multiplies the result.
        """
        layout, params_shape, expand = _layout(qt)
        _, multiplier, shift = codes_of(qt)
        current = self.node("Reshape", [codes, self.dims("layout", layout)], "codes")
        current = self.node("Cast", [current], "f", to=TensorProto.FLOAT)
        if multiplier != 1:
            current = self.node("Mul", [current, self.init("multiplier", np.array(multiplier, np.float32))], "x2")
        if shift:
            current = self.node("Sub", [current, self.init("shift", np.array(shift, np.float32))], "v")
        if qt.zero_point is not None:
            current = self.node("Sub", [current, self._zero_points(qt, params_shape, expand)], "c")
        scale = self.init("scale", qt.scale.astype(np.float32).reshape(params_shape))
        if expand:
            scale = self._expand_blocks(scale, qt, "scale")
        current = self.node("Mul", [current, scale], "dq")
        if mask is not None:
            mask = self.node("Reshape", [mask, self.dims("mask_layout", layout)], "mask_l")
            current = self.node("Mul", [current, mask], "m")
        return current, layout

    def _zero_points(self, qt: QuantizedTensor, params_shape: tuple[int, ...], expand: bool) -> str:
        zp = qt.zero_point
        if not zp.ndim:
            return self.init("zp", zp.astype(np.float32))
        if qt.bits < 8 and zp.size * (8 - qt.bits) // 8 > PACK_ZERO_POINTS_ABOVE:  # packing pays for its nodes
            current = self.unpack(pack_codes(zp, qt.bits), qt.bits, zp.size, "zp_packed")
            current = self.node("Reshape", [current, self.dims("zp_shape", params_shape)], "zp_u8")
        else:
            current = self.init("zp", zp.astype(np.uint8).reshape(params_shape))
        current = self.node("Cast", [current], "zpf", to=TensorProto.FLOAT)
        return self._expand_blocks(current, qt, "zp") if expand else current

    def _expand_blocks(self, params: str, qt: QuantizedTensor, suffix: str) -> str:
        """Repeat each block's parameter ``block_size`` times along the blocked axis (Reshape → Expand → Reshape →
        Slice)."""
        grouped = list(qt.scale.shape)
        axis, n = qt.axis, qt.values.shape[qt.axis]
        spread = grouped[: axis + 1] + [qt.block_size] + grouped[axis + 1 :]
        merged = list(grouped)
        merged[axis] = grouped[axis] * qt.block_size
        out = self.node(
            "Reshape",
            [params, self.dims(f"{suffix}_lift", grouped[: axis + 1] + [1] + grouped[axis + 1 :])],
            f"{suffix}_lifted",
        )
        out = self.node("Expand", [out, self.dims(f"{suffix}_spread", spread)], f"{suffix}_spread")
        out = self.node("Reshape", [out, self.dims(f"{suffix}_merge", merged)], f"{suffix}_merged")
        bounds = [self.dims(f"{suffix}_{k}", [v]) for k, v in (("start", 0), ("end", n), ("axis", axis))]
        return self.node("Slice", [out, *bounds], f"{suffix}_full")

    def finish(self, current: str, current_shape: tuple[int, ...], shape: tuple[int, ...], dtype: int | None) -> None:
        """Reshape to ``shape`` and cast float32 to ``dtype`` when given; the last node outputs ``self.output``."""
        if tuple(current_shape) != tuple(shape):
            current = self.node("Reshape", [current, self.dims("shape", shape)], "r")
        if dtype is not None and dtype != TensorProto.FLOAT:
            current = self.node("Cast", [current], "cast", to=dtype)
        if not self.nodes or self.nodes[-1].output[0] != current:
            current = self.node("Identity", [current], "identity")
        self.nodes[-1].output[0] = self.output


def _layout(qt: QuantizedTensor) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
    """(shape the codes are computed in, shape of scale and zero points there, whether blocks need Expand)."""
    shape = tuple(qt.values.shape)
    if qt.axis is None or not qt.scale.ndim:
        return shape, (), False
    if not qt.block_size:
        params = [1] * len(shape)
        params[qt.axis] = shape[qt.axis]
        return shape, tuple(params), False
    axis, blocks = qt.axis, qt.scale.shape[qt.axis]
    if shape[axis] != blocks * qt.block_size:
        return shape, tuple(qt.scale.shape), True
    layout = shape[:axis] + (blocks, qt.block_size) + shape[axis + 1 :]
    return layout, tuple(qt.scale.shape[:axis]) + (blocks, 1) + tuple(qt.scale.shape[axis + 1 :]), False


def _check_opset(opset: int) -> None:
    if opset < PACKED_OPSET:
        raise ValueError(
            f"packed and sparse storage need opset {PACKED_OPSET} (BitShift, CumSum); the model has opset {opset}"
        )


def packed_chain(
    qt: QuantizedTensor,
    output: str,
    taken: set[str],
    *,
    shape: tuple[int, ...] | None = None,
    dtype: int = TensorProto.FLOAT,
    opset: int = 17,
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes and initializers computing ``output`` = ``qt.dequantize()`` (reshaped to ``shape``, cast
    to ``dtype``) from codes packed at ``qt.bits`` bits (1 to 8), with zero points packed alike."""
    _check_opset(opset)
    chain = _Chain(output, taken)
    codes, _, _ = codes_of(qt)
    current = chain.unpack(pack_codes(codes, qt.bits), qt.bits, codes.size, "packed")
    current, layout = chain.dequantize(current, qt)
    chain.finish(current, layout, tuple(shape or qt.values.shape), dtype)
    return chain.nodes, chain.inits


def sparse_chain(
    values: np.ndarray | QuantizedTensor,
    output: str,
    taken: set[str],
    *,
    shape: tuple[int, ...] | None = None,
    dtype: int = TensorProto.FLOAT,
    opset: int = 17,
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes and initializers computing ``output`` from a packed non-zero mask and the non-zero values.

    ``values`` is a float array (its non-zeros stored in its own dtype) or a QuantizedTensor (the
    codes of its non-zero values packed at its width; zero means ``dequantize() == 0``). The result
    equals the dense tensor (``qt.dequantize()``) bit for bit.
    """
    _check_opset(opset)
    chain = _Chain(output, taken)
    quantized = isinstance(values, QuantizedTensor)
    array_shape = values.values.shape if quantized else np.shape(values)
    if quantized:
        dense = values.dequantize()
        mask = (dense != 0).ravel()
    else:
        flat = np.asarray(values).ravel()
        mask = (flat != 0).ravel()
    count = mask.size
    bits_mask = chain.unpack(pack_codes(mask.astype(np.uint8), 1), 1, count, "mask", flat=True)
    index = chain.node("Cast", [bits_mask], "mask_i64", to=TensorProto.INT64)
    rank = chain.node("CumSum", [index, chain.init("axis", np.array(0, np.int64))], "rank")
    index = chain.node("Mul", [rank, index], "index")
    if not quantized:
        nonzero = np.concatenate([np.zeros(1, flat.dtype), flat[mask]])  # index 0 reads the zero
        dense_flat = chain.node("Gather", [chain.init("nonzero", nonzero), index], "dense", axis=0)
        chain.finish(dense_flat, (count,), tuple(shape or array_shape), None)  # values keep their own dtype
        return chain.nodes, chain.inits
    codes, _, shift = codes_of(values)
    flat_codes = codes.ravel()
    per_tensor_zero = values.zero_point is None or not values.zero_point.ndim
    zero_code = (int(values.zero_point) if values.zero_point is not None else shift) if per_tensor_zero else 0
    stored = np.concatenate([np.array([zero_code], np.uint8), flat_codes[mask]])
    nonzero = chain.unpack(pack_codes(stored, values.bits), values.bits, stored.size, "nonzero", flat=True)
    dense_codes = chain.node("Gather", [nonzero, index], "dense", axis=0)
    mask_float = None
    if not per_tensor_zero:  # zero points differ per channel or block: zero the pruned positions after scaling
        mask_float = chain.node("Cast", [bits_mask], "mask_f", to=TensorProto.FLOAT)
    current, layout = chain.dequantize(dense_codes, values, mask_float)
    chain.finish(current, layout, tuple(shape or array_shape), dtype)
    return chain.nodes, chain.inits


@dataclass
class StoredWeight:
    """What :func:`store_weight` wrote for one tensor."""

    name: str
    form: str
    elements: int
    stored_bytes: int
    nonzeros: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.stored_bytes / self.elements if self.elements else 0.0

    def describe(self) -> dict:
        return {
            "tensor": self.name,
            "form": self.form,
            "stored_bytes": self.stored_bytes,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "density": round(self.nonzeros / self.elements, 6) if self.elements else 0.0,
        }


def weight_chain(
    values: np.ndarray | QuantizedTensor,
    output: str,
    taken: set[str],
    *,
    form: str = "packed",
    shape: tuple[int, ...] | None = None,
    dtype: int = TensorProto.FLOAT,
    opset: int = 17,
) -> tuple[str, list[onnx.NodeProto], list[TensorProto]]:
    """(form used, nodes, initializers) computing ``output`` in ``form`` (see :data:`FORMS`).

    ``smallest`` writes whichever of packed and sparse stores fewer bytes (a float array can only be
    stored sparse). ``dequantize_linear`` needs the opset :func:`onnxshrink.required_opset` gives.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)} (got {form!r})")
    quantized = isinstance(values, QuantizedTensor)
    if not quantized and form in ("packed", "dequantize_linear"):
        raise ValueError(f"form {form!r} needs a QuantizedTensor; a float array can only be stored sparse")
    if form == "smallest":
        if not quantized:
            form = "sparse"
        else:
            trial = {
                f: weight_chain(values, output, set(taken), form=f, shape=shape, dtype=dtype, opset=opset)
                for f in ("packed", "sparse")
            }
            form = min(trial, key=lambda f: (sum(tensor_bytes(t) for t in trial[f][2]), f != "packed"))
    if form == "packed":
        nodes, inits = packed_chain(values, output, taken, shape=shape, dtype=dtype, opset=opset)
    elif form == "sparse":
        nodes, inits = sparse_chain(values, output, taken, shape=shape, dtype=dtype, opset=opset)
    else:
        needed = required_opset(values)
        if opset < needed:
            raise ValueError(
                f"DequantizeLinear for {values.describe()} needs opset {needed}; the model has opset {opset}"
            )
        chain = _Chain(output, taken)
        dq_out = unique_name(taken, f"{output}_dequantized")
        nodes, inits = dequantize_linear(values, dq_out, taken)
        chain.nodes, chain.inits = list(nodes), list(inits)
        chain.finish(dq_out, values.values.shape, tuple(shape or values.values.shape), dtype)
        nodes, inits = chain.nodes, chain.inits
    return form, nodes, inits


def store_weight(
    model: onnx.ModelProto,
    weight: WeightTensor,
    values: np.ndarray | QuantizedTensor,
    *,
    form: str = "packed",
    shape: tuple[int, ...] | None = None,
    uses: list[Use] | None = None,
) -> StoredWeight:
    """Replace ``weight`` by ``values`` stored in ``form`` (see :func:`weight_chain`), where it is defined.

    ``values`` may be laid out differently (e.g. a Conv weight as a 2-D matrix): ``shape`` is then the
    weight's shape the chain reshapes to; the weight's dtype (float16...) is restored by a final Cast.
    Works for initializers, Constant nodes and outer-scope weights of subgraphs (via
    :func:`onnxshrink.replace_weight`); with ``uses``, only those readers see the new values.
    """
    shape = tuple(shape or weight.shape)
    array_shape = values.values.shape if isinstance(values, QuantizedTensor) else np.shape(values)
    if int(np.prod(shape, dtype=np.int64)) != int(np.prod(array_shape, dtype=np.int64)):
        raise ValueError(f"tensor {weight.name!r}: values of shape {tuple(array_shape)} cannot become shape {shape}")
    if not isinstance(values, QuantizedTensor):
        values = np.asarray(values, dtype=helper.tensor_dtype_to_np_dtype(weight.dtype))
    taken = all_names(model)
    used, nodes, inits = weight_chain(
        values, weight.name, taken, form=form, shape=shape, dtype=weight.dtype, opset=model_opset(model)
    )
    replace_weight(model, weight, nodes, inits, uses=uses)
    if isinstance(values, QuantizedTensor):
        nonzeros = int(np.count_nonzero(values.dequantize()))
    else:
        nonzeros = int(np.count_nonzero(values))
    return StoredWeight(weight.name, used, weight.size, sum(tensor_bytes(t) for t in inits), nonzeros)
