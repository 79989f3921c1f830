"""Rules for ops that keep channels apart or mix them: elementwise, normalisation, pooling, reductions."""

from __future__ import annotations

import onnx

from onnxshrink.ir.walk import node_attribute as attr
from onnxshrink.ir.walk import node_label
from onnxshrink.toolkit.channels.layout import ChannelAxis
from onnxshrink.toolkit.channels.state import Propagation, channel_axes, keep_unless, normalize_axes, remap


def passthrough(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    """Elementwise on input 0 (other inputs are scalars or attributes): outputs keep its layout."""
    layout = s.layout(node.input[0]) if node.input else None
    others = [s.layout(name) for name in node.input[1:]]
    if any(others):
        s.decline(
            [layout, *others], f"{node.op_type} {node_label(node)!r} reads channels in an input other than its first"
        )
        return
    for out in node.output:
        s.set(out, layout)


def elementwise(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    """Broadcasting elementwise ops (Add, Mul, Where, ...): channels meet channel by channel."""
    names = [n for n in node.input if n]
    layouts = [s.layout(n) for n in names]
    if not any(layouts):
        return
    ranks = [s.rank(n) for n in names]
    if any(r is None for r in ranks):
        s.decline(layouts, f"{node.op_type} {node_label(node)!r}: an input's rank is unknown")
        return
    out_rank = max(ranks)
    moved = [
        None if lay is None else remap(lay, lambda a, r=r: a + out_rank - r, out_rank) for lay, r in zip(layouts, ranks)
    ]
    joined = s.join(node, [m for m in moved if m is not None])
    if joined is None:
        return
    for name, layout, rank in zip(names, moved, ranks):
        if layout is not None:
            continue
        value = s.const(name)
        shape = s.shape(name)
        for axis in sorted(channel_axes(joined)):
            pos = axis - (out_rank - rank)
            dim = shape[pos] if pos >= 0 else 1
            if dim == 1:
                continue
            if value is not None and isinstance(joined, ChannelAxis) and dim == s.width(joined):
                s.slice_param(i, list(node.input).index(name), pos, joined)
                continue
            what = "constant" if value is not None else "tensor"
            s.decline(
                joined, f"{node.op_type} {node_label(node)!r} combines the channels with {what} {name!r} along them"
            )
            return
    for out in node.output:
        s.set(out, joined)


def batchnorm(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    if not isinstance(layout, ChannelAxis) or layout.axis != 1:
        s.decline(layout, f"{node.op_type} {node_label(node)!r} normalises another axis than the channels")
        return
    for slot in range(1, len(node.input)):
        if not node.input[slot]:
            continue
        if s.const(node.input[slot]) is None:
            s.decline(layout, f"{node.op_type} {node_label(node)!r}: parameter {node.input[slot]!r} is not a constant")
            return
        s.slice_param(i, slot, 0, layout)
    s.set(node.output[0], layout)


def softmax(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    if s.opset < 13:
        start = normalize_axes([attr(node, "axis", 1)], layout.rank)[0]
        normalized = set(range(start, layout.rank))
    else:
        normalized = set(normalize_axes([attr(node, "axis", -1)], layout.rank))
    keep_unless(s, node, layout, normalized, "normalises over the channels")


def layernorm(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    start = normalize_axes([attr(node, "axis", -1)], layout.rank)[0]
    keep_unless(
        s, node, layout, set(range(start, layout.rank)), "normalises over the channels", outputs=node.output[:1]
    )


def mvn(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is not None:
        keep_unless(
            s,
            node,
            layout,
            set(normalize_axes(attr(node, "axes", [0, 2, 3]), layout.rank)),
            "normalises over the channels",
        )


def lpnorm(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is not None:
        keep_unless(
            s, node, layout, set(normalize_axes([attr(node, "axis", -1)], layout.rank)), "normalises over the channels"
        )


def pool(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    if not isinstance(layout, ChannelAxis) or layout.axis != 1:
        s.decline(layout, f"{node.op_type} {node_label(node)!r} pools over the channel axis")
        return
    if len(node.output) > 1 and node.output[1]:
        s.decline(layout, f"{node.op_type} {node_label(node)!r} outputs indices that count channels")
        return
    s.set(node.output[0], layout)


def reduce(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    rank = layout.rank
    keepdims = attr(node, "keepdims", 1)
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [attr(node, "axis", 0)]
    elif len(node.input) > 1 and node.input[1]:
        value = s.const(node.input[1])
        if value is None:
            s.decline(layout, f"{node.op_type} {node_label(node)!r}: axes are computed at run time")
            return
        axes = value.ravel().tolist()
    else:
        axes = attr(node, "axes")
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            s.set(node.output[0], layout)
            return
        axes = list(range(rank))
    axes = normalize_axes(axes, rank)
    if set(axes) & channel_axes(layout):
        s.decline(layout, f"{node.op_type} {node_label(node)!r} reduces over the channels")
        return
    if keepdims:
        s.set(node.output[0], layout)
    else:
        s.set(node.output[0], remap(layout, lambda a: a - sum(x < a for x in axes), rank - len(axes)))
