"""Walking a model's graphs: every graph and subgraph, names, what a node reads, node labels."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import onnx


def iter_graphs(graph: onnx.GraphProto) -> Iterator[tuple[onnx.GraphProto, tuple[onnx.GraphProto, ...]]]:
    """Every graph (the main one first, then subgraphs depth-first) with its chain of outer graphs."""
    stack: list[tuple[onnx.GraphProto, tuple[onnx.GraphProto, ...]]] = [(graph, ())]
    while stack:
        g, outer = stack.pop(0)
        yield g, outer
        subs = []
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    subs.append((attr.g, (g, *outer)))
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    subs.extend((sg, (g, *outer)) for sg in attr.graphs)
        stack[0:0] = subs


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds in its attributes (If branches, Loop and Scan bodies)."""
    out = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def outer_references(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads but does not bind itself: its outer-scope references."""
    bound = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(name for name in node.input if name)
        for sub in subgraphs(node):
            used |= outer_references(sub)
        bound.update(node.output)
    used.update(o.name for o in graph.output)
    return used - bound


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every name a node reads, in a fixed order: its inputs, then (sorted) the outer-scope names its
    subgraphs read."""
    names = [name for name in node.input if name]
    if has_subgraph(node):
        inner: set[str] = set()
        for sub in subgraphs(node):
            inner |= outer_references(sub)
        names.extend(sorted(inner - set(names)))
    return names


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor and node name in the model (for choosing fresh names)."""
    names: set[str] = set()
    for g, _ in iter_graphs(model.graph):
        names.update(t.name for t in g.initializer)
        names.update(v.name for v in itertools.chain(g.input, g.output, g.value_info))
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
    names.discard("")
    return names


def unique_name(taken: set[str], base: str) -> str:
    """``base`` or ``base_1``, ``base_2``... whichever is not in ``taken``; the result is added to it."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node defines with its `value` attribute, or None."""
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        for attr in node.attribute:
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                return attr.t
    return None


def node_attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of a node's attribute ``name`` (as onnx.helper reads it), or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def node_label(node: onnx.NodeProto) -> str:
    """How stats and ``exclude=`` options name a node: its name, or ``Op(first output)`` when it has none."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else ''})"


def is_graph_output(model: onnx.ModelProto, name: str) -> bool:
    return any(o.name == name for o in model.graph.output)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type (``domain::Op`` outside the default domain), subgraphs included."""
    counts: dict[str, int] = {}
    for g, _ in iter_graphs(model.graph):
        for node in g.node:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
