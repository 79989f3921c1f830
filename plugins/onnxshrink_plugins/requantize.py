"""requantize: fewer bits for weights that are already int8/uint8, stored packed and unpacked at load."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

import onnxshrink
from onnxshrink import Method, Option, Tunable

INTEGER_TYPES = (TensorProto.INT8, TensorProto.UINT8)
PACKED_OPSET = 11  # BitShift and CumSum in the unpack chain
PER_AXIS_OPSET = 13  # DequantizeLinear's axis attribute
LSTM_SLOTS = {1: (8, 9), 2: (10, 11)}  # DynamicQuantizeLSTM: W -> (W_scale, W_zero_point), R -> (R_scale, R_zero_point)


OUTSIDE_SCALE = frozenset({"MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "QGemm"})


@dataclass
class Site:
    """One integer weight this method can rewrite: the node reading it and how its scale is laid out."""

    weight: onnxshrink.WeightTensor
    use: onnxshrink.Use
    scale_slot: int
    zero_slot: int | None
    columns: tuple[int, ...]  # axes that keep their own scale per index when per_column is on
    kept: tuple[int, ...]  # axes the present scale already varies along (per direction, per axis, per block)


class Requantize(Method):
    """Re-quantize int8/uint8 weights to fewer bits per column, stored packed and unpacked to int8 at load.

    Rewrites the integer weights of ``com.microsoft::DynamicQuantizeLSTM`` (W and R, with their
    scale/zero-point inputs) and of standard ``DequantizeLinear`` whose x is an int8/uint8 constant
    with constant scale (and zero point). Per column (one factor k per output column of a
    DequantizeLinear → MatMul/Gemm/Conv weight, per column of the 4*hidden axis of an LSTM weight) the
    codes become ``round((codes - zero_point) / k)`` in ``[-(2^(bits-1)-1), 2^(bits-1)-1]``, the scale
    ``scale * k`` and the zero point 0 (uint8 weights keep their type with zero point 2^(bits-1)).
    The codes are stored packed at ``bits`` bits with the toolkit's packed chain, which computes the
    int8 (uint8) tensor the node reads exactly; onnxruntime folds the chain at session creation, so
    the session runs the same kernels on int8 weights. Left as they are, with the reason in ``left``:
    integer weights of other ops (MatMulInteger, ConvInteger: their scale is applied outside the
    node), weights read by several nodes, non-constant scales, tensors under ``min_size`` elements,
    excluded tensors, and every weight of a model under opset 11. Per-tensor DequantizeLinear scales
    become per-axis only at opset 13 and up (below that, one k per tensor).
    """

    name = "requantize"
    kind = "quantize"
    options = (
        Option("bits", int, 7, "Bits per re-quantized code (symmetric, 2..7).", min=2, max=7),
        Option("per_column", bool, True, "One factor per output column (false: one per existing scale group)."),
        Option("exclude", list, None, "Node names, op types or tensor names whose weights stay as they are."),
        Option("min_size", int, 1024, "Leave integer weights with fewer elements as they are.", min=0),
    )
    search_space = (Tunable("bits", choices=(7, 6, 5, 4)),)

    @classmethod
    def not_applicable(cls, model: onnx.ModelProto) -> str | None:
        graphs = [g for g, _ in onnxshrink.iter_graphs(model.graph)]
        integer = {t.name for g in graphs for t in g.initializer if t.data_type in INTEGER_TYPES}
        for node in (n for g in graphs for n in g.node if n.op_type == "Constant"):
            value = onnxshrink.constant_value(node)
            if value is not None and value.data_type in INTEGER_TYPES:
                integer.add(node.output[0])
        for node in (n for g in graphs for n in g.node):
            slots = tuple(LSTM_SLOTS) if node.op_type == "DynamicQuantizeLSTM" else (0,)
            if node.op_type in ("DynamicQuantizeLSTM", "DequantizeLinear") and any(
                i < len(node.input) and node.input[i] in integer for i in slots
            ):
                return None
        return "no int8/uint8 weight read by DynamicQuantizeLSTM or DequantizeLinear (a float model)"

    def apply(self, model: onnx.ModelProto, options: onnxshrink.Options, context: onnxshrink.Context) -> dict[str, Any]:
        self.check_exclude(model, options.exclude)
        excluded = set(options.exclude or ())
        opset = onnxshrink.model_opset(model)
        rewritten: list[dict[str, Any]] = []
        left: list[dict[str, Any]] = []
        constants = _constants(model)
        taken = onnxshrink.all_names(model)
        for weight in _integer_weights(model):
            if all(_is_parameter(u) for u in weight.uses):
                continue  # a zero point: rewritten with its weight
            site, reason = _site(weight, constants, opset, options, excluded)
            if reason:
                left.append({"tensor": weight.name, "shape": list(weight.shape), "reason": reason})
                continue
            done = _rewrite(model, site, constants, options, opset, taken)
            if isinstance(done, str):
                left.append({"tensor": weight.name, "shape": list(weight.shape), "reason": done})
            else:
                rewritten.append(done)
        stats: dict[str, Any] = {
            "bits": options.bits,
            "rewritten_tensors": len(rewritten),
            "left_tensors": len(left),
            "left_reasons": dict(sorted(Counter(e["reason"] for e in left).items())),
            "bytes_before": sum(t["bytes_before"] for t in rewritten),
            "bytes_after": sum(t["bytes_after"] for t in rewritten),
            "max_relative_error": max((t["relative_error"] for t in rewritten), default=0.0),
            "tensors": rewritten,
            "left": left,
        }
        if not rewritten:
            context.warn(
                "no int8/uint8 weight with a constant scale was found to re-quantize; the model is unchanged"
                + (" (see 'left' for why)" if left else "")
            )
        return stats


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node values by name, over every graph (the first definition wins)."""
    found: dict[str, onnx.TensorProto] = {}
    for g, _ in onnxshrink.iter_graphs(model.graph):
        inputs = {i.name for i in g.input}
        for init in g.initializer:
            if init.name not in inputs:
                found.setdefault(init.name, init)
        for node in g.node:
            value = onnxshrink.constant_value(node)
            if value is not None and node.output:
                found.setdefault(node.output[0], value)
    return found


def _integer_weights(model: onnx.ModelProto) -> list[onnxshrink.WeightTensor]:
    """Every int8/uint8 initializer or Constant value read by some node, with all its readers."""
    weights: list[onnxshrink.WeightTensor] = []
    graphs = list(onnxshrink.iter_graphs(model.graph))
    main = graphs[0][0]
    for g, _ in graphs:
        inputs = {i.name for i in g.input}
        defs = [
            ("overridable" if t.name in inputs else "initializer", t.name, t, None)
            for t in g.initializer
            if t.data_type in INTEGER_TYPES
        ]
        for node in g.node:
            value = onnxshrink.constant_value(node)
            if value is not None and node.output and value.data_type in INTEGER_TYPES:
                defs.append(("constant", node.output[0], value, node))
        for source, name, proto, const_node in defs:
            uses = [
                onnxshrink.Use(h, node, i)
                for h, outer in graphs
                if h is g or (g in outer and not _binds(h, name))
                for node in h.node
                for i, inp in enumerate(node.input)
                if inp == name
            ]
            if uses:
                weight = onnxshrink.WeightTensor(name, source, g, proto, const_node, in_subgraph=g is not main)
                weight.weight_uses.extend(uses)
                weights.append(weight)
    return weights


def _is_parameter(use: onnxshrink.Use) -> bool:
    """Whether ``use`` reads a zero point (reported with its weight, not on its own)."""
    if use.node.op_type == "DequantizeLinear":
        return use.index == 2
    if use.node.op_type in ("MatMulInteger", "ConvInteger"):
        return use.index in (2, 3)
    return use.node.op_type == "DynamicQuantizeLSTM" and use.index in (9, 11)


def _binds(g: onnx.GraphProto, name: str) -> bool:
    return any(t.name == name for t in g.initializer) or any(i.name == name for i in g.input)


def _site(
    weight: onnxshrink.WeightTensor,
    constants: dict[str, onnx.TensorProto],
    opset: int,
    options: onnxshrink.Options,
    excluded: set[str],
) -> tuple[Site | None, str]:
    """(what to rewrite, '') or (None, why the weight stays as it is)."""
    if weight.source == "overridable":
        return None, "also a graph input: a caller may feed another value"
    if len(weight.uses) > 1:
        return None, f"read by {len(weight.uses)} node inputs"
    [use] = weight.uses
    node = use.node
    if weight.name in excluded or {onnxshrink.node_label(node), node.op_type} & excluded:
        return None, "excluded (exclude=)"
    lstm = node.op_type == "DynamicQuantizeLSTM" and node.domain == "com.microsoft" and use.index in LSTM_SLOTS
    dq = node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx") and use.index == 0
    if not (lstm or dq):
        why = " (its scale is applied outside the node)" if node.op_type in OUTSIDE_SCALE else ""
        return None, f"read by {node.op_type} input {use.index}{why}: not rewritten"
    if weight.size < options.min_size:
        return None, f"fewer than min_size ({options.min_size}) elements"
    if opset < PACKED_OPSET:
        return None, f"opset {opset} < {PACKED_OPSET}: the packed chain needs BitShift and CumSum"
    rank = len(weight.shape)
    if lstm:
        scale_slot, zero_slot = LSTM_SLOTS[use.index]
        scale = _input(node, scale_slot, constants)
        if scale is None:
            return None, "DynamicQuantizeLSTM scale is not a constant"
        if rank != 3:
            return None, f"DynamicQuantizeLSTM weight of rank {rank}, not [directions, inputs, 4*hidden]"
        kept = (0,) if scale.ndim <= 1 else (0, 2)
        return Site(weight, use, scale_slot, zero_slot, (0, 2), kept), _constant_zero(node, zero_slot, constants)
    scale = _input(node, 1, constants)
    if scale is None:
        return None, "DequantizeLinear x_scale is not a constant"
    axis = _attribute(node, "axis", 1)
    axis = axis + rank if axis < 0 else axis
    if _attribute(node, "block_size", 0):
        kept = columns = (axis,)
    elif scale.size > 1 or scale.ndim == 1 and opset >= PER_AXIS_OPSET and _attribute(node, "axis", None) is not None:
        kept = columns = (axis,)
    else:
        kept = ()
        columns = (_output_axis(node, rank, use),) if opset >= PER_AXIS_OPSET and rank else ()
    return Site(weight, use, 1, 2, columns, kept), _constant_zero(node, 2, constants)


def _constant_zero(node: onnx.NodeProto, slot: int, constants: dict[str, onnx.TensorProto]) -> str:
    if len(node.input) > slot and node.input[slot] and node.input[slot] not in constants:
        return f"{node.op_type} zero point is not a constant"
    return ""


def _input(node: onnx.NodeProto, slot: int, constants: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    if len(node.input) <= slot or node.input[slot] not in constants:
        return None
    return numpy_helper.to_array(constants[node.input[slot]])


def _attribute(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _output_axis(node: onnx.NodeProto, rank: int, use: onnxshrink.Use) -> int:
    """The output-channel axis of the DequantizeLinear result for its readers (MatMul: the last axis)."""
    readers = [
        onnxshrink.Use(use.graph, n, i) for n in use.graph.node for i, x in enumerate(n.input) if x == node.output[0]
    ]
    axes = {onnxshrink.weight_axes(r, rank)[0] for r in readers}
    return axes.pop() if len(axes) == 1 else rank - 1


def _rewrite(
    model: onnx.ModelProto,
    site: Site,
    constants: dict[str, onnx.TensorProto],
    options: onnxshrink.Options,
    opset: int,
    taken: set[str],
) -> dict[str, Any] | str:
    """Re-quantize one weight, store it packed and wire the new scale (and zero point) into its node; or
    say why not (the packed codes, unpack nodes and new scales would not be smaller than the int8 tensor)."""
    weight, node, bits = site.weight, site.use.node, options.bits
    codes = weight.array()
    rank = codes.ndim
    signed = codes.dtype == np.int8
    scale = _input(node, site.scale_slot, constants).astype(np.float32)
    zero = _input(node, site.zero_slot, constants) if site.zero_slot is not None else None
    block = _attribute(node, "block_size", 0) if node.op_type == "DequantizeLinear" else 0
    scale_full = _broadcast(scale, codes.shape, site, node, block)
    zero_full = np.zeros_like(scale_full) if zero is None else _broadcast(zero, codes.shape, site, node, block)
    centered = codes.astype(np.float32) - zero_full
    groups = site.columns if options.per_column else site.kept
    reduce_axes = tuple(a for a in range(rank) if a not in groups)
    top = 2 ** (bits - 1) - 1
    if block:
        k = _block_factors(np.abs(centered), site.kept[0], block, top, options.per_column)
    else:
        k = np.maximum(np.max(np.abs(centered), axis=reduce_axes, keepdims=True), top) / top
    new = np.clip(np.round(centered / k), -top, top)
    offset = 0 if signed else 2 ** (bits - 1)
    new_codes = (new + offset).astype(codes.dtype)
    new_scale_full = (scale_full * k).astype(np.float32)
    before = centered * scale_full
    after = new * new_scale_full
    error = float(np.linalg.norm(after - before) / max(np.linalg.norm(before), 1e-30))

    new_scale, new_zero, axis = _parameters(new_scale_full, codes, groups, node, block, offset)
    qt = onnxshrink.QuantizedTensor(new_codes, np.array(1.0, np.float32), None, bits)
    old_param_bytes = scale.nbytes + (0 if zero is None else zero.nbytes)
    new_param_bytes = new_scale.nbytes + (0 if new_zero is None else new_zero.nbytes)
    nodes, inits = onnxshrink.packed_chain(
        qt, weight.name, set(taken), shape=weight.shape, dtype=weight.dtype, opset=opset
    )
    chain_bytes = sum(n.ByteSize() for n in nodes) + sum(t.ByteSize() for t in inits)
    if chain_bytes + new_param_bytes >= weight.proto.ByteSize() + old_param_bytes:
        return (
            f"not smaller at {bits} bits ({chain_bytes + new_param_bytes} >= {weight.nbytes + old_param_bytes} bytes)"
        )
    stored = onnxshrink.store_weight(model, weight, qt, form="packed")
    taken.update(onnxshrink.all_names(model))
    graph = site.use.graph
    scale_name = onnxshrink.unique_name(taken, f"{node.input[site.scale_slot]}_requantized")
    graph.initializer.append(numpy_helper.from_array(new_scale, scale_name))
    node.input[site.scale_slot] = scale_name
    zero_name = ""
    if new_zero is not None:
        base = node.input[site.zero_slot] if len(node.input) > site.zero_slot and node.input[site.zero_slot] else ""
        zero_name = onnxshrink.unique_name(taken, f"{base or weight.name + '_zero_point'}_requantized")
        graph.initializer.append(numpy_helper.from_array(new_zero, zero_name))
    if site.zero_slot is not None:
        while len(node.input) <= site.zero_slot and zero_name:
            node.input.append("")
        if len(node.input) > site.zero_slot:
            node.input[site.zero_slot] = zero_name
        while node.input and not node.input[-1]:
            node.input.pop()
    if axis is not None:
        _set_axis(node, axis)
    return {
        "tensor": weight.name,
        "node": onnxshrink.node_label(node),
        "op": node.op_type,
        "shape": list(weight.shape),
        "dtype": "int8" if signed else "uint8",
        "scales": int(new_scale.size),
        "bytes_before": weight.nbytes + old_param_bytes,
        "bytes_after": stored.stored_bytes + new_param_bytes,
        "relative_error": round(error, 6),
        "max_factor": round(float(np.max(k)), 6),
    }


def _broadcast(params: np.ndarray, shape: tuple[int, ...], site: Site, node: onnx.NodeProto, block: int) -> np.ndarray:
    """Scale-shaped (or zero-point-shaped) ``params`` broadcast against the weight, as float32."""
    params = params.astype(np.float32)
    rank = len(shape)
    if node.op_type == "DynamicQuantizeLSTM":  # [D] or [D, 4h]
        return params.reshape(shape[0], 1, -1) if params.ndim == 2 else params.reshape(-1, 1, 1)
    if params.size == 1:
        return params.reshape((1,) * rank)
    axis = site.kept[0]
    if block:
        return np.repeat(params, block, axis=axis)[tuple(slice(0, d) for d in shape)]
    view = [1] * rank
    view[axis] = shape[axis]
    return params.reshape(view)


def _block_factors(magnitude: np.ndarray, axis: int, block: int, top: int, per_block: bool) -> np.ndarray:
    """Factors k for a blocked DequantizeLinear weight, repeated to the weight's shape."""
    if not per_block:
        return np.full((1,) * magnitude.ndim, max(float(magnitude.max()), top) / top, np.float32)
    n = magnitude.shape[axis]
    starts = np.arange(0, n, block)
    peaks = np.maximum.reduceat(magnitude, starts, axis=axis)
    k = np.maximum(peaks, top) / top
    return np.repeat(k, block, axis=axis)[tuple(slice(0, d) for d in magnitude.shape)]


def _parameters(
    scale_full: np.ndarray, codes: np.ndarray, groups: tuple[int, ...], node: onnx.NodeProto, block: int, offset: int
) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """(new scale, new zero point or None, DequantizeLinear axis to set or None) in the node's layout."""
    dtype = codes.dtype
    if node.op_type == "DynamicQuantizeLSTM":
        d = codes.shape[0]
        columns = scale_full.shape[2]
        scale = scale_full.reshape(d, columns) if columns > 1 else scale_full.reshape(d)
        return scale, np.full(scale.shape, offset, dtype), None
    keep_zero = bool(offset) or _has_zero(node)
    if not groups:
        scale = scale_full.reshape(())
        return scale, (np.array(offset, dtype) if keep_zero else None), None
    [axis] = groups
    if block:
        starts = np.arange(0, codes.shape[axis], block)
        scale = np.take(np.broadcast_to(scale_full, codes.shape), starts, axis=axis).copy()
    else:
        scale = _along(scale_full, axis)
    zero = np.full(scale.shape, offset, dtype) if keep_zero else None
    return scale, zero, axis


def _along(params: np.ndarray, axis: int) -> np.ndarray:
    """The 1-D values of ``params`` (size 1 on every other axis) along ``axis``."""
    index = tuple(slice(None) if a == axis else 0 for a in range(params.ndim))
    return np.ascontiguousarray(params[index])


def _has_zero(node: onnx.NodeProto) -> bool:
    return len(node.input) > 2 and bool(node.input[2])


def _set_axis(node: onnx.NodeProto, axis: int) -> None:
    for attr in node.attribute:
        if attr.name == "axis":
            attr.i = axis
            return
    node.attribute.append(onnx.helper.make_attribute("axis", axis))


@onnxshrink.hookimpl
def register_methods(register):
    register(Requantize)
