"""Rules for ops that move, reshape, join or pick along axes: Transpose, Reshape, Flatten, Concat, Slice..."""

from __future__ import annotations

import math

import numpy as np
import onnx

from onnxshrink.ir.walk import node_attribute as attr
from onnxshrink.ir.walk import node_label
from onnxshrink.toolkit.channels.layout import ChannelAxis, HeadAxes, Layout, Segment, ShapeEdit
from onnxshrink.toolkit.channels.state import Dim, Propagation, channel_axes, keep_unless, normalize_axes, remap


def transpose(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    perm = attr(node, "perm") or list(reversed(range(layout.rank)))
    s.set(node.output[0], remap(layout, lambda a: list(perm).index(a), layout.rank))


def _axes_input(s: Propagation, node: onnx.NodeProto) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        value = s.const(node.input[1])
        return None if value is None else value.ravel().tolist()
    return attr(node, "axes")


def squeeze(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    axes = _axes_input(s, node)
    if axes is None:
        shape = s.shape(node.input[0])
        if shape is None or any(d is None or isinstance(d, str) for d in shape):
            s.decline(layout, f"Squeeze {node_label(node)!r}: axes unknown")
            return
        axes = [k for k, d in enumerate(shape) if d == 1]
    axes = normalize_axes(axes, layout.rank)
    if set(axes) & channel_axes(layout):
        s.decline(layout, f"Squeeze {node_label(node)!r} removes the channel axis")
        return
    s.set(node.output[0], remap(layout, lambda a: a - sum(x < a for x in axes), layout.rank - len(axes)))


def unsqueeze(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    axes = _axes_input(s, node)
    if axes is None:
        s.decline(layout, f"Unsqueeze {node_label(node)!r}: axes are computed at run time")
        return
    out_rank = layout.rank + len(axes)
    inserted = normalize_axes(axes, out_rank)
    kept = [k for k in range(out_rank) if k not in inserted]
    s.set(node.output[0], remap(layout, lambda a: kept[a], out_rank))


def flatten(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    shape = s.shape(node.input[0])
    start = normalize_axes([attr(node, "axis", 1)], layout.rank)[0] if layout.rank else 0
    if isinstance(layout, ChannelAxis) and shape is not None and layout.axis >= start:
        before, after = shape[start : layout.axis], shape[layout.axis + 1 :]
        if all(isinstance(d, int) for d in (*before, *after)) and math.prod(before) == 1:
            s.set(node.output[0], ChannelAxis(1, 2, layout.repeated(math.prod(after)).segments))
            return
    s.decline(layout, f"Flatten {node_label(node)!r} mixes the channels with other axes")


def reshape(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    target = s.const(node.input[1])
    shape = s.shape(node.input[0])
    why = f"Reshape {node_label(node)!r}"
    if target is None:
        s.decline(layout, f"{why} computes its shape at run time")
        return
    if shape is None or len(shape) != layout.rank:
        s.decline(layout, f"{why}: input shape unknown")
        return
    target = [int(v) for v in target.ravel()]
    if attr(node, "allowzero", 0) and 0 in target:
        s.decline(layout, f"{why} uses allowzero")
        return
    result = _follow_reshape(s, i, layout, list(shape), target)
    if isinstance(result, str):
        s.decline(layout, f"{why} {result}")
    else:
        s.set(node.output[0], result)


def _follow_reshape(s: Propagation, i: int, layout: Layout, shape: list[Dim], target: list[int]) -> Layout | str:
    """The output layout of a Reshape, recording edits to its literal sizes, or why it cannot be followed."""
    if isinstance(layout, HeadAxes):
        a = layout.heads_axis
        if layout.dims_axis != a + 1 or a + 2 != layout.rank or len(target) != a + 1:
            return "does not merge the attention heads back into one axis"
        if not _same_prefix(shape, target, a, layout.heads * layout.head_dim):
            return "changes the axes before the attention heads"
        if target[a] > 0:
            s.edits.append(ShapeEdit(layout.atom, i, 1, a, 1, 1))
        return ChannelAxis(a, a + 1, (Segment(layout.atom),))
    a = layout.axis
    after = shape[a + 1 :]
    if not all(isinstance(d, int) for d in after):
        return "has an unknown size after the channel axis"
    inner = math.prod(after)
    width = s.width(layout)
    if len(target) == a + 1:  # merge the channel axis with everything after it (Flatten-like)
        if not _same_prefix(shape, target, a, width * inner):
            return "changes the axes before the channels"
        if target[a] > 0:
            for segment in layout.segments:
                s.edits.append(ShapeEdit(segment.atom, i, 1, a, segment.repeat * inner, 1))
        return ChannelAxis(a, a + 1, layout.repeated(inner).segments)
    if a == layout.rank - 1 and len(target) == a + 2 and len(layout.segments) == 1 and layout.segments[0].repeat == 1:
        heads, head_dim = target[a], target[a + 1]  # split into attention heads [.., H, Dh]
        if heads == -1 and head_dim > 0 and width % head_dim == 0:
            heads = width // head_dim
        elif head_dim == -1 and heads > 0 and width % heads == 0:
            head_dim = width // heads
        if heads > 0 and head_dim > 0 and heads * head_dim == width and _same_prefix(shape, target, a, width):
            atom = layout.segments[0].atom
            s.atoms.constrain(atom, unit=head_dim)
            if target[a] > 0:
                s.edits.append(ShapeEdit(atom, i, 1, a, 1, head_dim))
            return HeadAxes(atom, a + 2, a, a + 1, heads, head_dim)
    # the channel axis stays where it is; the axes after it may be regrouped ([N, C] -> [N, C, 1, 1])
    tail = target[a + 1 :]
    if len(target) > a and target[a] in (0, -1, width) and all(t > 0 for t in tail) and math.prod(tail) == inner:
        if _same_prefix(shape, target, a, width * inner):
            if target[a] > 0:
                for segment in layout.segments:
                    s.edits.append(ShapeEdit(segment.atom, i, 1, a, segment.repeat, 1))
            return layout.moved(a, len(target))
    return "reshapes the channel axis in a way the analysis does not follow"


def _same_prefix(shape: list[Dim], target: list[int], a: int, tail: int) -> bool:
    """Whether ``target[:a]`` keeps the input's ``shape[:a]``: every entry 0 (copy), the same static size,
    or a single -1 that can only resolve to the input's size because ``target[a:]`` holds literal sizes
    whose product is ``tail``, the input's element count from axis ``a`` on."""
    free = [k for k in range(a) if target[k] == -1]
    if len(free) > 1 or free and (any(t <= 0 for t in target[a:]) or math.prod(target[a:]) != tail):
        return False
    return all(target[k] in (0, -1) or isinstance(shape[k], int) and target[k] == shape[k] for k in range(a))


def concat(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    names = [n for n in node.input if n]
    layouts = [s.layout(n) for n in names]
    if not any(layouts):
        return
    rank = next(lay.rank for lay in layouts if lay is not None)
    axis = normalize_axes([attr(node, "axis", 0)], rank)[0]
    on_axis = [lay for lay in layouts if lay is not None and axis in channel_axes(lay)]
    if not on_axis:  # concatenated along another axis: channels meet elementwise
        joined = s.join(node, [lay for lay in layouts if lay is not None])
        if joined is None:
            return
        for slot, (name, layout) in enumerate(zip(node.input, layouts)):
            if layout is not None or not name:
                continue
            if s.const(name) is not None and isinstance(joined, ChannelAxis):
                s.slice_param(i, slot, joined.axis, joined)
            else:
                s.decline(
                    joined, f"Concat {node_label(node)!r} joins them with {name!r} whose channels are not tracked"
                )
                return
        s.set(node.output[0], joined)
        return
    segments: list[Segment] = []
    for name, layout in zip(names, layouts):
        if isinstance(layout, ChannelAxis) and layout.axis == axis:
            segments.extend(layout.segments)
            continue
        shape = s.shape(name)
        size = shape[axis] if shape is not None and len(shape) == rank else None
        if layout is not None or not isinstance(size, int):
            s.decline(layouts, f"Concat {node_label(node)!r} joins channels laid out differently")
            return
        segments.append(
            Segment(
                s.atoms.new(
                    size, None, f"Concat {node_label(node)!r} joins them with {name!r}, whose channels are not pruned"
                )
            )
        )
    s.set(node.output[0], ChannelAxis(axis, rank, tuple(segments)))


def slice_(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    if s.opset < 10:
        axes = attr(node, "axes") or list(range(len(attr(node, "starts", []))))
    elif len(node.input) > 3 and node.input[3]:
        value = s.const(node.input[3])
        axes = None if value is None else value.ravel().tolist()
    else:
        starts = s.shape(node.input[1])
        axes = None if starts is None or not isinstance(starts[0], int) else list(range(starts[0]))
    if axes is None:
        s.decline(layout, f"Slice {node_label(node)!r}: axes unknown")
        return
    keep_unless(s, node, layout, set(normalize_axes(axes, layout.rank)), "slices the channels")


def gather(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if s.layout(node.input[1]) is not None:
        s.decline(s.layout(node.input[1]), f"Gather {node_label(node)!r} uses them as indices")
    if layout is None:
        return
    axis = normalize_axes([attr(node, "axis", 0)], layout.rank)[0]
    q = s.rank(node.input[1])
    if q is None or axis in channel_axes(layout):
        s.decline(layout, f"Gather {node_label(node)!r} picks along the channels")
        return
    s.set(node.output[0], remap(layout, lambda a: a if a < axis else a - 1 + q, layout.rank - 1 + q))


def pad(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    pads = attr(node, "pads") if s.opset < 11 else s.const(node.input[1]) if len(node.input) > 1 else None
    axes = s.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if pads is None or axes is not None:
        s.decline(layout, f"Pad {node_label(node)!r}: pads unknown")
        return
    pads = [int(p) for p in np.ravel(pads)]
    rank = layout.rank
    if any(pads[a] or pads[a + rank] for a in channel_axes(layout)):
        s.decline(layout, f"Pad {node_label(node)!r} pads the channels")
        return
    s.set(node.output[0], layout)


def resize(s: Propagation, i: int, node: onnx.NodeProto) -> None:
    layout = s.layout(node.input[0])
    if layout is None:
        return
    slot = 1 if node.op_type == "Upsample" or s.opset < 11 else 2
    sizes = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 else ""
    scales = s.const(node.input[slot]) if len(node.input) > slot and node.input[slot] else None
    if (
        sizes
        or scales is None
        or scales.size != layout.rank
        or any(scales.ravel()[a] != 1 for a in channel_axes(layout))
    ):
        s.decline(layout, f"{node.op_type} {node_label(node)!r} may resize the channel axis")
        return
    s.set(node.output[0], layout)
