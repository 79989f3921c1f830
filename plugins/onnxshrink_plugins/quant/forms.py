"""Write one target weight in a quantized form: the folded storage chain or a DequantizeLinear node.

Every writer returns a record for the stats: the tensor, the layers that read it, the form, the
scheme, bytes before and after, and the largest absolute rounding error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

import onnxshrink
from onnxshrink import QuantizedTensor

from ..shared.float16 import beyond_float16, store_float16
from ..shared.layers import RESHAPED_OPS, matrix_view
from .targets import Target, node_label

# Bits onnxruntime's MatMulNBits CPU kernel (which DequantizeLinear → MatMul fuses into) accepts.
MATMULNBITS_BITS = (2, 4, 8)


@dataclass(frozen=True)
class Scheme:
    """How weights become integers. ``block_size`` None means per-channel or per-tensor.

    ``bits=16`` is float16 storage (a Cast back at load), used only as the wider form the
    sensitivity search keeps sensitive layers in.
    """

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = True
    block_size: int | None = None

    def quantize(self, array: np.ndarray, channel_axis: int, reduce_axis: int) -> QuantizedTensor:
        if self.block_size:
            return onnxshrink.quantize(
                array, self.bits, symmetric=self.symmetric, axis=reduce_axis, block_size=self.block_size
            )
        axis = channel_axis if self.per_channel else None
        return onnxshrink.quantize(array, self.bits, symmetric=self.symmetric, axis=axis)


def record(
    target: Target,
    form: str,
    qt: QuantizedTensor | None,
    original: np.ndarray,
    inits: list[onnx.TensorProto],
    note: str = "",
) -> dict:
    weight = target.weight
    out = {
        "tensor": weight.name,
        "layers": target.layers,
        "op_types": sorted({u.node.op_type for u in target.uses}),
        "form": form,
        "scheme": qt.describe() if qt is not None else "",
        "shape": list(weight.shape),
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(weight.dtype).name,
        "source": weight.source,
        "in_subgraph": weight.in_subgraph,
        "shared_by": len(weight.uses),
        "bytes_before": int(original.nbytes),
        "bytes_after": int(sum(_tensor_bytes(t) for t in inits)),
    }
    if qt is not None:
        out["max_abs_error"] = qt.max_abs_error(original)
    if target.kept_uses:
        kept = ", ".join(sorted({node_label(u.node) for u in target.kept_uses}))
        note = f"{note}; " if note else ""
        note += f"excluded readers ({kept}) keep a float copy"
    if note:
        out["note"] = note
    return out


_SUBBYTE_BITS = {
    onnx.TensorProto.INT4: 4,
    onnx.TensorProto.UINT4: 4,
    onnx.TensorProto.INT2: 2,
    onnx.TensorProto.UINT2: 2,
}


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of raw data (from dims and type: reading ``raw_data`` would copy it), else the proto's size."""
    count = math.prod(tensor.dims)
    if tensor.HasField("raw_data") and count:
        bits = _SUBBYTE_BITS.get(tensor.data_type)
        return (
            (count * bits + 7) // 8 if bits else count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        )
    return tensor.ByteSize()


def float16_reason(target: Target) -> str | None:
    """Why ``target`` cannot be stored as float16, or None."""
    if target.weight.dtype != onnx.TensorProto.FLOAT:
        return "not float32"
    if beyond_float16(target.weight.array()):
        return "values beyond float16's range"
    return None


def write_float16(model: onnx.ModelProto, target: Target, taken: set[str], note: str = "") -> dict:
    """A float16 copy + Cast to float32 in front of the readers (folded at load, half the bytes)."""
    original = target.weight.array()
    uses = target.uses if target.kept_uses else None
    stored = store_float16(model, target.weight, taken, array=original, uses=uses)
    out = record(target, "storage", None, original, [stored.tensor], note)
    out["scheme"] = "float16"
    out["max_abs_error"] = stored.max_abs_error
    return out


def write_storage(model: onnx.ModelProto, target: Target, scheme: Scheme, taken: set[str], note: str = "") -> dict:
    """Integers + Cast → (Sub) → Mul in front of the readers; onnxruntime folds it at session creation.

    Block-wise Conv weights are quantized on their (out channels, in channels × kernel) matrix view,
    so one block spans the whole reduction and not one kernel position. ``scheme.bits == 16``:
    float16 + Cast (check :func:`float16_reason` first).
    """
    weight = target.weight
    if scheme.bits == 16:
        return write_float16(model, target, taken, note)
    original = weight.array()
    array = np.asarray(original, dtype=np.float32)
    shape = None
    if weight.weight_uses[0].node.op_type in RESHAPED_OPS:
        array = array.reshape(matrix_view(weight.shape, scheme.block_size or 32))
        qt = scheme.quantize(array, 0, 1)
        shape = original.shape
    elif scheme.block_size and weight.weight_uses[0].node.op_type == "Conv" and array.ndim > 2:
        array = array.reshape(array.shape[0], -1)
        qt = scheme.quantize(array, 0, 1)
        shape = original.shape
    else:
        qt = scheme.quantize(array, target.channel_axis, target.reduce_axis)
    nodes, inits = onnxshrink.storage_chain(qt, weight.name, taken, dtype=weight.dtype, shape=shape)
    partial = bool(target.kept_uses)
    onnxshrink.replace_weight(model, weight, nodes, inits, uses=target.uses if partial else None)
    return record(target, "storage", qt, original, inits, note)


def dequantize_linear_reason(target: Target, scheme: Scheme, dq_conv: bool) -> str | None:
    """Why ``target`` cannot take a DequantizeLinear that onnxruntime runs well, or None."""
    weight = target.weight
    use = target.uses[0]
    op = use.node.op_type
    if weight.dtype != onnx.TensorProto.FLOAT:
        return "not float32: onnxruntime's integer kernels compute in float32 and would add Casts"
    if not target.single_use:
        return (
            "read by several nodes: "
            "onnxruntime fuses DequantizeLinear into MatMulNBits only for a weight read by one MatMul"
        )
    if op == "Conv":
        if dq_conv:
            return None
        return "Conv: onnxruntime's CPU EP does not fuse DequantizeLinear with Conv (it would run on every inference)"
    if op not in ("MatMul", "Gemm") or use.index != 1 or len(weight.shape) != 2:
        return f"{op} input {use.index}: only 2-D MatMul/Gemm B weights fuse into MatMulNBits"
    if op == "Gemm":
        attrs = {a.name: a for a in use.node.attribute}
        if attrs.get("transA") is not None and attrs["transA"].i:
            return "Gemm with transA=1 does not fuse into MatMulNBits"
        if any(name in attrs and attrs[name].f != 1.0 for name in ("alpha", "beta")):
            return "Gemm with alpha or beta other than 1 does not fuse into MatMulNBits"
    if scheme.bits not in MATMULNBITS_BITS:
        return f"MatMulNBits takes 2, 4 or 8 bits, not {scheme.bits}"
    return None


def write_dequantize_linear(
    model: onnx.ModelProto, target: Target, scheme: Scheme, taken: set[str], note: str = ""
) -> dict:
    """A DequantizeLinear in front of a single MatMul/Gemm B (or Conv) weight.

    A Gemm with transB=1 gets its weight stored transposed and transB=0, the layout onnxruntime's
    DequantizeLinear → MatMulNBits fusion accepts.
    """
    weight = target.weight
    use = target.uses[0]
    original = weight.array()
    array = np.asarray(original, dtype=np.float32)
    channel_axis, reduce_axis = target.channel_axis, target.reduce_axis
    if use.node.op_type == "Gemm" and channel_axis == 0:
        array = array.T.copy()
        channel_axis, reduce_axis = 1, 0
        for attr in use.node.attribute:
            if attr.name == "transB":
                attr.i = 0
        for g, _ in onnxshrink.iter_graphs(model.graph):
            stale = [i for i, v in enumerate(g.value_info) if v.name == weight.name]
            for i in reversed(stale):
                del g.value_info[i]
        note = (f"{note}; " if note else "") + "stored transposed, Gemm transB set to 0"
    qt = scheme.quantize(array, channel_axis, reduce_axis)
    nodes, inits = onnxshrink.dequantize_linear(qt, weight.name, taken)
    onnxshrink.replace_weight(model, weight, nodes, inits)
    return record(target, "dequantize_linear", qt, original if array.shape == original.shape else array, inits, note)


def matmul_layout(target: Target) -> tuple[bool, str | None]:
    """(stored transposed?, reason it cannot) for a weight read only as MatMul/Gemm B by every reader.

    Readers must be MatMul input 1 or Gemm input 1 with transA=0 and alpha = beta = 1, the weight 2-D
    and float32, and all Gemm readers agree on transB. A transposed (transB=1) weight is stored (K, N).
    """
    weight = target.weight
    if weight.dtype != onnx.TensorProto.FLOAT:
        return False, "not float32: onnxruntime's integer kernels compute in float32 and would add Casts"
    if weight.other_uses or target.kept_uses:
        return False, "also read by other inputs or excluded nodes, which need the float tensor"
    orientations = set()
    for use in target.uses:
        op = use.node.op_type
        if op == "Conv":
            return (
                False,
                "Conv has no weight-only integer kernel on onnxruntime's CPU EP (DequantizeLinear → Conv is not fused)",
            )
        if op not in ("MatMul", "Gemm") or use.index != 1 or len(weight.shape) != 2:
            return False, f"{op} input {use.index}: only 2-D MatMul/Gemm B weights have an integer kernel"
        transposed = False
        if op == "Gemm":
            attrs = {a.name: a for a in use.node.attribute}
            if "transA" in attrs and attrs["transA"].i:
                return False, "Gemm with transA=1 is not rewritten"
            if any(name in attrs and attrs[name].f != 1.0 for name in ("alpha", "beta")):
                return False, "Gemm with alpha or beta other than 1 is not rewritten"
            transposed = bool(attrs["transB"].i) if "transB" in attrs else False
        orientations.add(transposed)
    if len(orientations) > 1:
        return False, "shared by a Gemm with transB=1 and a reader without it"
    return orientations.pop(), None


def replace_node(use: onnxshrink.Use, new_nodes: list[onnx.NodeProto]) -> None:
    """Put ``new_nodes`` where ``use.node`` stands in its graph (the last one writes its output)."""
    graph, node = use.graph, use.node
    position = next(i for i, n in enumerate(graph.node) if n is node)
    del graph.node[position]
    for offset, new in enumerate(new_nodes):
        graph.node.insert(position + offset, new)


def drop_definition(weight: onnxshrink.WeightTensor) -> None:
    """Remove the weight's initializer or Constant node once no reader is left."""
    g = weight.graph
    if weight.constant_node is not None:
        index = next((i for i, n in enumerate(g.node) if n is weight.constant_node), None)
        if index is not None:
            del g.node[index]
        return
    index = next((i for i, t in enumerate(g.initializer) if t.name == weight.name), None)
    if index is not None:
        del g.initializer[index]
