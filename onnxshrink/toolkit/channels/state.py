"""The state of one channel analysis (layouts per tensor, atoms, edits, sink slots) and the helpers
the per-op rules share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from onnxshrink.ir.shapes import inferred_shapes
from onnxshrink.ir.walk import node_label, node_reads
from onnxshrink.toolkit.channels.constants import Constants
from onnxshrink.toolkit.channels.layout import (
    Atoms,
    ChannelAxis,
    Edit,
    HeadAxes,
    Layout,
    Segment,
    SinkSlot,
    SliceEdit,
    atoms_of,
)

Dim = int | str | None


class Propagation:
    """The state of one analysis: layouts per tensor, atoms, edits, sink slots."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.constants = Constants(model)
        self.shapes = inferred_shapes(model)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.atoms = Atoms()
        self.layouts: dict[str, Layout] = {}
        self.edits: list[Edit] = []
        self.slots: list[SinkSlot] = []
        self.tensors: dict[int, list[str]] = {}

    # -- queries ------------------------------------------------------------------------------------
    def layout(self, name: str) -> Layout | None:
        return self.layouts.get(name) if name else None

    def const(self, name: str) -> np.ndarray | None:
        return self.constants.get(name) if name else None

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        value = self.const(name)
        if value is not None:
            return tuple(value.shape)
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        layout = self.layout(name)
        if layout is not None:
            return layout.rank
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def width(self, layout: ChannelAxis) -> int:
        return sum(self.atoms.size[s.atom] * s.repeat for s in layout.segments)

    def offsets(self, layout: ChannelAxis) -> list[tuple[Segment, int]]:
        out, offset = [], 0
        for segment in layout.segments:
            out.append((segment, offset))
            offset += self.atoms.size[segment.atom] * segment.repeat
        return out

    def weight(self, index: int, slot: int) -> tuple[np.ndarray | None, str | None]:
        """A node's constant weight input, or None and why it cannot be resized."""
        node = self.nodes[index]
        name = node.input[slot] if slot < len(node.input) else ""
        value = self.const(name)
        if value is None:
            return (
                None,
                f"{node.op_type} {node_label(node)!r} reads weight {name!r} that is not a constant (a graph input or "
                "computed)",
            )
        if self.constants.readers[name] > 1:
            return value, f"weight {name!r} of {node_label(node)!r} is shared with other nodes"
        return value, None

    # -- updates ------------------------------------------------------------------------------------
    def set(self, name: str, layout: Layout | None) -> None:
        if not name or layout is None:
            return
        self.layouts[name] = layout
        for atom in atoms_of(layout):
            self.tensors.setdefault(atom, []).append(name)

    def decline(self, layouts: Sequence[Layout | None] | Layout | None, reason: str) -> None:
        if layouts is None or isinstance(layouts, (ChannelAxis, HeadAxes)):
            layouts = [layouts]
        for layout in layouts:
            if layout is not None:
                for atom in atoms_of(layout):
                    self.atoms.decline(atom, reason)

    def decline_reads(self, node: onnx.NodeProto, reason: str) -> None:
        self.decline([self.layout(name) for name in sorted(node_reads(node))], reason)

    def source(
        self,
        index: int,
        size: int,
        slot: int,
        axis: int,
        bias: tuple[int, int] | None = None,
        reason: str | None = None,
    ) -> int:
        """A new atom for a node's output channels, with the edits to its weight (and bias)."""
        node = self.nodes[index]
        atom = self.atoms.new(size, index, reason)
        self.edits.append(SliceEdit(atom, index, slot, axis, 0, 1, "source"))
        if bias is not None:
            bias_slot, bias_axis = bias
            name = node.input[bias_slot]
            if self.const(name) is None:
                self.atoms.decline(atom, f"bias {name!r} of {node_label(node)!r} is not a constant")
            else:
                self.edits.append(SliceEdit(atom, index, bias_slot, bias_axis, 0, 1, "param"))
        return atom

    def sink(self, index: int, layout: ChannelAxis, slot: int, axis: int, tensor: str) -> None:
        """A node that contracts ``layout``'s channels with its weight input ``slot`` along ``axis``."""
        for segment, offset in self.offsets(layout):
            self.edits.append(SliceEdit(segment.atom, index, slot, axis, offset, segment.repeat, "sink"))
            self.slots.append(SinkSlot(segment.atom, index, tensor, layout.axis, offset, segment.repeat))

    def slice_param(self, index: int, slot: int, axis: int, layout: ChannelAxis) -> None:
        for segment, offset in self.offsets(layout):
            self.edits.append(SliceEdit(segment.atom, index, slot, axis, offset, segment.repeat, "param"))

    def join(self, node: onnx.NodeProto, layouts: list[Layout]) -> Layout | None:
        """Layouts that meet elementwise (already in the output's axes): their atoms are tied channel by
        channel. Returns the joined layout, or None (and declines them) when they do not line up."""
        first = layouts[0]
        for other in layouts[1:]:
            if not self._union(first, other):
                self.decline(layouts, f"{node.op_type} {node_label(node)!r} combines channels that do not line up")
                return None
        return first

    def _union(self, a: Layout, b: Layout) -> bool:
        sizes = self.atoms.size
        if isinstance(a, HeadAxes) or isinstance(b, HeadAxes):
            if not (isinstance(a, HeadAxes) and isinstance(b, HeadAxes)):
                return False
            if (a.heads_axis, a.dims_axis, a.heads, a.head_dim) != (b.heads_axis, b.dims_axis, b.heads, b.head_dim):
                return False
            return self.atoms.union(a.atom, b.atom)
        if a.axis != b.axis or len(a.segments) != len(b.segments):
            return False
        if any(x.repeat != y.repeat or sizes[x.atom] != sizes[y.atom] for x, y in zip(a.segments, b.segments)):
            return False
        return all(self.atoms.union(x.atom, y.atom) for x, y in zip(a.segments, b.segments))


Rule = Callable[[Propagation, int, onnx.NodeProto], None]


def normalize_axes(axes, rank: int) -> list[int]:
    return sorted({int(a) + rank if int(a) < 0 else int(a) for a in axes})


def channel_axes(layout: Layout) -> set[int]:
    if isinstance(layout, HeadAxes):
        return {a for a in (layout.heads_axis, layout.dims_axis) if a is not None}
    return {layout.axis}


def remap(layout: Layout, mapping: Callable[[int], int], rank: int) -> Layout:
    if isinstance(layout, HeadAxes):
        dims = None if layout.dims_axis is None else mapping(layout.dims_axis)
        return HeadAxes(layout.atom, rank, mapping(layout.heads_axis), dims, layout.heads, layout.head_dim)
    return layout.moved(mapping(layout.axis), rank)


def keep_unless(s: Propagation, node: onnx.NodeProto, layout: Layout, axes: set[int], why: str, outputs=None) -> None:
    if axes & channel_axes(layout):
        s.decline(layout, f"{node.op_type} {node_label(node)!r} {why}")
        return
    for out in outputs if outputs is not None else node.output:
        s.set(out, layout)
