"""int_pack: store int8 tensors in fewer bits plus their exceptions (lossless)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxshrink
from onnxshrink import Method, Option

MIN_OPSET = 11  # ScatterElements, and BitShift/CumSum in the packed chain
WIDTHS = range(2, 8)
EXCEPTION_BYTES = 5  # one int32 position and one int8 value per value outside the narrow range


class IntPack(Method):
    """Store each int8 tensor in the fewest bits that pay, plus its exceptions: a smaller file, same outputs.

    Int8 weights rarely use their whole range: most values of a per-tensor int8 LSTM or MatMul weight
    fit in 5-7 bits, a few outliers do not. Each int8 initializer of the main graph with at least
    ``min_size`` elements is stored as its values clipped to the b-bit range, packed at b bits, plus
    the positions (int32) and values of those outside it, restored by ScatterElements; b (2-7) is
    the width with the fewest bytes, and the tensor is left as it is when no width saves at least
    ``min_saving`` of its bytes. onnxruntime folds the chain back into the int8 tensor when it
    creates the session, so the outputs are bit-identical and run time is unchanged. Graph inputs,
    uint8 tensors (packed codes of other methods) and tensors of subgraphs are left as they are.
    Useful on already-integer models and after ``int_quant`` at 8 bits.
    """

    name = "int_pack"
    kind = "transform"
    lossless = True
    options = (
        Option("min_size", int, 4096, "Leave int8 tensors with fewer elements as they are.", min=1),
        Option(
            "min_saving",
            float,
            0.05,
            "Pack a tensor only when that saves at least this fraction of its bytes.",
            min=0.0,
            max=1.0,
        ),
    )

    def apply(self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
        packed: list[dict[str, Any]] = []
        left: dict[str, int] = {}
        opset = onnxshrink.model_opset(model)
        inputs = {i.name for i in model.graph.input}
        candidates = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8]
        for proto in candidates:
            reason = _skip_reason(proto, inputs, options.min_size, opset)
            if reason is None:
                values = numpy_helper.to_array(proto)
                chain = _chain(model, proto, values, _best_width(values), opset)
                if chain.file_bytes > proto.ByteSize() * (1 - options.min_saving):
                    reason = f"saves less than min_saving ({options.min_saving})"
                else:
                    packed.append(chain.replace(model, proto))
                    continue
            left[reason] = left.get(reason, 0) + 1
        stats = {
            "packed_tensors": len(packed),
            "left_tensors": sum(left.values()),
            "left_reasons": dict(sorted(left.items())),
            "bytes_before": sum(t["bytes_before"] for t in packed),
            "bytes_after": sum(t["bytes_after"] for t in packed),
            "tensors": packed,
        }
        if candidates and not packed:
            context.warn("no int8 tensor was packed; the model is unchanged (see 'left_reasons')")
        return stats


def _skip_reason(proto: onnx.TensorProto, inputs: set[str], min_size: int, opset: int) -> str | None:
    if proto.name in inputs:
        return "also a graph input"
    if math.prod(proto.dims) < min_size:
        return f"fewer than min_size ({min_size}) elements"
    if opset < MIN_OPSET:
        return f"opset {opset} < {MIN_OPSET}"
    return None


def _outside(values: np.ndarray, bits: int) -> np.ndarray:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return (values < low) | (values > high)


def _best_width(values: np.ndarray) -> int:
    """The width whose packed values plus exceptions take the fewest bytes (ties to the wider)."""
    costs = [
        ((values.size * bits + 7) // 8 + int(_outside(values, bits).sum()) * EXCEPTION_BYTES, -bits) for bits in WIDTHS
    ]
    return -min(costs)[1]


@dataclass
class _Chain:
    """The nodes and initializers that compute one int8 tensor from its packed form."""

    nodes: list[onnx.NodeProto]
    inits: list[onnx.TensorProto]
    info: dict[str, Any]

    @property
    def file_bytes(self) -> int:
        return sum(n.ByteSize() for n in self.nodes) + sum(t.ByteSize() for t in self.inits)

    def replace(self, model: onnx.ModelProto, proto: onnx.TensorProto) -> dict[str, Any]:
        uses = onnxshrink.consumers(model, proto.name)
        weight = onnxshrink.WeightTensor(proto.name, "initializer", model.graph, proto, weight_uses=uses)
        bytes_before = onnxshrink.tensor_bytes(proto)
        onnxshrink.replace_weight(model, weight, self.nodes, self.inits)
        return {
            **self.info,
            "bytes_before": bytes_before,
            "bytes_after": sum(onnxshrink.tensor_bytes(t) for t in self.inits),
        }


def _chain(model: onnx.ModelProto, proto: onnx.TensorProto, values: np.ndarray, bits: int, opset: int) -> _Chain:
    flat = values.reshape(-1)
    outside = np.flatnonzero(_outside(flat, bits))
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    narrow = onnxshrink.QuantizedTensor(np.clip(flat, low, high).astype(np.int8), np.array(1.0, np.float32), None, bits)
    taken = onnxshrink.all_names(model)
    # short names: the chain's nodes repeat them, and on small tensors long ones eat the saving
    base = onnxshrink.unique_name(taken, "int_pack")
    nodes, inits = onnxshrink.packed_chain(narrow, base, taken, shape=(flat.size,), dtype=TensorProto.INT8, opset=opset)
    taken.update([base, *(t.name for t in inits), *(o for n in nodes for o in n.output)])
    positions, exceptions, shape, patched = (
        onnxshrink.unique_name(taken, f"{base}_{x}") for x in ("at", "ex", "shape", "patched")
    )
    inits += [
        numpy_helper.from_array(outside.astype(np.int32), positions),
        numpy_helper.from_array(flat[outside].astype(np.int8), exceptions),
        numpy_helper.from_array(np.array(values.shape, np.int64), shape),
    ]
    nodes += [
        helper.make_node("ScatterElements", [base, positions, exceptions], [patched], axis=0),
        helper.make_node("Reshape", [patched, shape], [proto.name]),
    ]
    info = {"tensor": proto.name, "shape": list(values.shape), "bits": bits, "exceptions": int(outside.size)}
    return _Chain(nodes, inits, info)


@onnxshrink.hookimpl
def register_methods(register):
    register(IntPack)
