"""What the channel analysis knows about a tensor: which axis carries which channels.

Channels come in *atoms*: the output channels of one producing node (a Conv's filters, a Gemm's or
MatMul's output features). Atoms that must be removed together (a residual Add ties two of them,
attention ties query, key and value heads) are joined in a union-find; each class is a group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    """A run of an atom's channels along an axis; each channel covers ``repeat`` consecutive positions
    (``repeat`` > 1 after a Flatten of C×H×W, or the outputs of a depthwise Conv with a multiplier)."""

    atom: int
    repeat: int = 1


@dataclass(frozen=True)
class ChannelAxis:
    """Axis ``axis`` of a rank-``rank`` tensor is the concatenation of ``segments``."""

    axis: int
    rank: int
    segments: tuple[Segment, ...]

    def moved(self, axis: int, rank: int) -> ChannelAxis:
        return ChannelAxis(axis, rank, self.segments)

    def repeated(self, factor: int) -> ChannelAxis:
        return ChannelAxis(self.axis, self.rank, tuple(Segment(s.atom, s.repeat * factor) for s in self.segments))


@dataclass(frozen=True)
class HeadAxes:
    """An atom split into attention heads: axis ``heads_axis`` indexes ``heads`` heads of ``head_dim``
    channels, axis ``dims_axis`` the channels inside a head (None once a MatMul contracted them)."""

    atom: int
    rank: int
    heads_axis: int
    dims_axis: int | None
    heads: int
    head_dim: int


Layout = ChannelAxis | HeadAxes


@dataclass
class Atoms:
    """Atoms, their union-find classes, their constraints and why any of them may not be pruned."""

    size: list[int] = field(default_factory=list)
    source: list[int | None] = field(default_factory=list)  # node index, None for a fixed atom
    unit: list[int] = field(default_factory=list)  # remove whole aligned runs of `unit` channels (heads)
    blocks: list[int] = field(
        default_factory=list
    )  # remove as many channels from each of `blocks` blocks (grouped Conv)
    reasons: list[list[str]] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)

    def new(self, size: int, source: int | None, reason: str | None = None) -> int:
        index = len(self.size)
        self.size.append(size)
        self.source.append(source)
        self.unit.append(1)
        self.blocks.append(1)
        self.reasons.append([reason] if reason else [])
        self.parent.append(index)
        return index

    def find(self, atom: int) -> int:
        root = atom
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[atom] != root:  # path compression
            self.parent[atom], atom = root, self.parent[atom]
        return root

    def union(self, a: int, b: int) -> bool:
        """Join the classes of ``a`` and ``b``; False (nothing joined) when their sizes differ."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.size[ra] != self.size[rb]:
            return False
        low, high = min(ra, rb), max(ra, rb)  # the older atom stays the root: stable group ids
        self.parent[high] = low
        return True

    def decline(self, atom: int, reason: str) -> None:
        if reason not in self.reasons[atom]:
            self.reasons[atom].append(reason)

    def constrain(self, atom: int, *, unit: int = 1, blocks: int = 1) -> None:
        self.unit[atom] = math.lcm(self.unit[atom], unit)
        self.blocks[atom] = math.lcm(self.blocks[atom], blocks)

    def members(self) -> dict[int, list[int]]:
        """Root → its atoms, in creation order."""
        classes: dict[int, list[int]] = {}
        for atom in range(len(self.size)):
            classes.setdefault(self.find(atom), []).append(atom)
        return classes


def atoms_of(layout: Layout) -> list[int]:
    if isinstance(layout, HeadAxes):
        return [layout.atom]
    return [s.atom for s in layout.segments]


# Edits: what removing an atom's channels does to the model, recorded during the analysis and applied
# by removal.py. ``node`` is the node's index in the analysed graph.


@dataclass(frozen=True)
class SliceEdit:
    """Drop the atom's channel positions from constant input ``input`` of a node, along ``axis``:
    channel c covers positions ``offset + c * repeat`` to ``offset + c * repeat + repeat - 1``.
    ``role``: ``source`` (the producer's weight), ``sink`` (a consumer's weight), ``depthwise`` (a
    depthwise Conv's weight), ``param`` (bias, normalisation parameters, broadcast constants)."""

    atom: int
    node: int
    input: int
    axis: int
    offset: int
    repeat: int
    role: str


@dataclass(frozen=True)
class GroupedInputEdit:
    """Drop input channels of a grouped Conv: each group of filters loses its own columns."""

    atom: int
    node: int
    groups: int


@dataclass(frozen=True)
class ShapeEdit:
    """Lower entry ``position`` of a Reshape's constant shape by ``removed * numer // denom``."""

    atom: int
    node: int
    input: int
    position: int
    numer: int
    denom: int


@dataclass(frozen=True)
class AttrEdit:
    """Lower integer attribute ``name`` (a depthwise Conv's ``group``) by ``removed * numer``."""

    atom: int
    node: int
    name: str
    numer: int


@dataclass(frozen=True)
class SinkSlot:
    """A consumer that contracts the atom's channels, read from ``tensor`` along ``axis`` (positions as in
    SliceEdit)."""

    atom: int
    node: int
    tensor: str
    axis: int
    offset: int
    repeat: int


Edit = SliceEdit | GroupedInputEdit | ShapeEdit | AttrEdit
