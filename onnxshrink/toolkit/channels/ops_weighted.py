"""Rules for the ops that produce and consume channels with their weights: Conv, Gemm, MatMul, attention."""

from __future__ import annotations

import onnx

from onnxshrink.ir.walk import node_attribute as attr
from onnxshrink.ir.walk import node_label
from onnxshrink.toolkit.channels.layout import (
    AttrEdit,
    ChannelAxis,
    GroupedInputEdit,
    HeadAxes,
    Layout,
    Segment,
    SinkSlot,
    SliceEdit,
)
from onnxshrink.toolkit.channels.state import Propagation


def _sink_or_decline(
    s: Propagation, i: int, layout: Layout | None, problem: str | None, slot: int, axis: int, tensor: str
) -> None:
    if layout is not None:
        if problem:
            s.decline(layout, problem)
        else:
            s.sink(i, layout, slot, axis, tensor)


def conv(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    x, label = node.input[0], node_label(node)
    layout = s.layout(x)
    if layout is not None and (isinstance(layout, HeadAxes) or layout.axis != 1):
        s.decline(layout, f"{node.op_type} {label!r} reads the channels on an axis other than 1")
        layout = None
    shape, rank = s.shape(node.input[1]), s.rank(x)
    if shape is None or rank is None or not all(isinstance(d, int) for d in shape[:2]):
        s.decline(layout, f"{node.op_type} {label!r}: weight shape unknown")
        return
    _, problem = s.weight(i, 1)
    group = attr(node, "group", 1)
    bias = (2, 0) if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "ConvTranspose":  # weight [C_in, C_out / group, k...]
        if group != 1:
            problem = problem or f"ConvTranspose {label!r} with group={group} is not supported"
        _sink_or_decline(s, i, layout, problem, 1, 0, x)
        atom = s.source(i, shape[1] * group, 1, 1, bias, problem)
    elif group == 1:  # weight [C_out, C_in, k...]
        _sink_or_decline(s, i, layout, problem, 1, 1, x)
        atom = s.source(i, shape[0], 1, 0, bias, problem)
    elif shape[1] == 1 and shape[0] % group == 0:
        # depthwise: output channel o reads input channel o // multiplier, so it carries the input's channels
        if layout is None:
            return
        if problem:
            s.decline(layout, problem)
            return
        multiplier = shape[0] // group
        for segment, offset in s.offsets(layout):
            s.edits.append(
                SliceEdit(segment.atom, i, 1, 0, offset * multiplier, segment.repeat * multiplier, "depthwise")
            )
            if bias is not None:
                s.edits.append(
                    SliceEdit(segment.atom, i, 2, 0, offset * multiplier, segment.repeat * multiplier, "param")
                )
            s.edits.append(AttrEdit(segment.atom, i, "group", segment.repeat))
        s.set(node.output[0], layout.repeated(multiplier))
        return
    else:  # grouped: each group of filters reads its own block of input channels
        if layout is not None and not problem and (len(layout.segments) != 1 or layout.segments[0].repeat != 1):
            problem = f"grouped Conv {label!r} reads concatenated channels"
        if layout is not None:
            if problem:
                s.decline(layout, problem)
            else:
                atom = layout.segments[0].atom
                s.atoms.constrain(atom, blocks=group)
                s.edits.append(GroupedInputEdit(atom, i, group))
                s.slots.append(SinkSlot(atom, i, x, 1, 0, 1))
        atom = s.source(i, shape[0], 1, 0, bias, problem)
        s.atoms.constrain(atom, blocks=group)
    s.set(node.output[0], ChannelAxis(1, rank, (Segment(atom),)))


def gemm(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    a, b = node.input[0], node.input[1]
    layout_a, layout_b = s.layout(a), s.layout(b)
    if layout_b is not None:
        s.decline(layout_b, f"Gemm {node_label(node)!r} reads them in its second matrix")
    trans_a, trans_b = attr(node, "transA", 0), attr(node, "transB", 0)
    shape = s.shape(b)
    if shape is None or len(shape) != 2 or not isinstance(shape[0 if trans_b else 1], int):
        s.decline(layout_a, f"Gemm {node_label(node)!r}: shape of {b!r} unknown")
        return
    weight, problem = s.weight(i, 1)
    if layout_a is not None:
        if trans_a or not isinstance(layout_a, ChannelAxis) or layout_a.axis != 1:
            s.decline(layout_a, f"Gemm {node_label(node)!r} reads the channels on an axis it does not contract")
        elif problem:
            s.decline(layout_a, problem)
        else:
            s.sink(i, layout_a, 1, 1 if trans_b else 0, a)
    if s.const(a) is not None:
        return  # a constant first matrix: the output's channels are not features of a tensor
    n = int(shape[0 if trans_b else 1])
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c_shape = s.shape(node.input[2])
        bias = (2, len(c_shape) - 1) if c_shape and c_shape[-1] == n and n > 1 else None
        if s.const(node.input[2]) is None:
            problem = problem or f"bias {node.input[2]!r} of {node_label(node)!r} is not a constant"
    atom = s.source(i, n, 1, 0 if trans_b else 1, bias, problem)
    s.set(node.output[0], ChannelAxis(1, 2, (Segment(atom),)))


def matmul(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    a, b = node.input[0], node.input[1]
    layout_a, layout_b = s.layout(a), s.layout(b)
    const_a, const_b = s.const(a), s.const(b)
    if const_a is None and const_b is None:
        _attention_matmul(s, i, node, layout_a, layout_b)
        return
    if const_b is None or const_b.ndim != 2:
        s.decline([layout_a, layout_b], f"MatMul {node_label(node)!r} with a constant first matrix is not followed")
        return
    rank = s.rank(a)
    if rank is None or rank < 2:
        s.decline(layout_a, f"MatMul {node_label(node)!r}: rank of {a!r} unknown")
        return
    weight, problem = s.weight(i, 1)
    if layout_a is not None:
        if not isinstance(layout_a, ChannelAxis) or layout_a.axis != rank - 1:
            s.decline(layout_a, f"MatMul {node_label(node)!r} reads the channels on an axis it does not contract")
        elif problem:
            s.decline(layout_a, problem)
        else:
            s.sink(i, layout_a, 1, 0, a)
    atom = s.source(i, int(const_b.shape[1]), 1, 1, None, problem)
    s.set(node.output[0], ChannelAxis(rank - 1, rank, (Segment(atom),)))


def _attention_matmul(s: Propagation, i: int, node: onnx.NodeProto, a: Layout | None, b: Layout | None) -> None:
    """Two activations multiplied: attention scores (Q·Kᵀ) and context (softmax·V), per head."""
    if a is None and b is None:
        return
    why = f"MatMul {node_label(node)!r} multiplies two activations in a pattern that is not attention heads"
    if isinstance(a, ChannelAxis) or isinstance(b, ChannelAxis) or a is None or b is None:  # one head, no Reshape
        rank = (a or b).rank
        if (
            isinstance(a, ChannelAxis)
            and isinstance(b, ChannelAxis)
            and a.rank == b.rank
            and a.axis == rank - 1
            and b.axis == rank - 2
        ):
            if s.join(node, [a, b.moved(rank - 1, rank)]) is not None:
                return  # Q·Kᵀ: channel i of Q meets channel i of K; the scores carry no channels
        elif a is None and isinstance(b, ChannelAxis) and b.axis == rank - 1 and s.rank(node.input[0]) == rank:
            s.set(node.output[0], b)  # softmax·V: V's channels pass through
            return
        else:
            s.decline([a, b], why)
        return
    if not (isinstance(a, HeadAxes) and isinstance(b, HeadAxes)) or a.rank != b.rank:
        s.decline([a, b], why)
        return
    rank = a.rank
    same_heads = a.heads_axis == b.heads_axis < rank - 2 and (a.heads, a.head_dim) == (b.heads, b.head_dim)
    if same_heads and a.dims_axis == rank - 1 and b.dims_axis == rank - 2 and s.atoms.union(a.atom, b.atom):
        s.set(node.output[0], HeadAxes(a.atom, rank, a.heads_axis, None, a.heads, a.head_dim))
    elif same_heads and a.dims_axis is None and b.dims_axis == rank - 1 and s.atoms.union(a.atom, b.atom):
        s.set(node.output[0], HeadAxes(b.atom, rank, b.heads_axis, rank - 1, b.heads, b.head_dim))
    else:
        s.decline([a, b], why)
