"""Tidy a model after an edit: drop dead nodes and unused tensors, sort nodes topologically.

Written on ModelProto rather than with onnx-graphsurgeon's cleanup because graphsurgeon's export copies
outer-scope constants into every If/Loop/Scan subgraph that reads them (verified with
onnx-graphsurgeon 0.6.1), which stores shared weights twice.
"""

from __future__ import annotations

import heapq

import onnx
import onnx_graphsurgeon as gs

from onnxshrink.ir.walk import node_reads, subgraphs


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """An onnx-graphsurgeon graph of ``model`` (for methods that prefer editing with gs).

    Beware: exporting it back copies outer-scope constants into subgraphs; prefer ModelProto edits for
    models with If/Loop/Scan.
    """
    return gs.import_onnx(model)


def from_graph(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` back to a ModelProto keeping ``like``'s model-level fields (IR, opsets, metadata)."""
    exported = gs.export_onnx(graph, do_type_check=False)
    out = onnx.ModelProto()
    out.CopyFrom(like)
    out.graph.CopyFrom(exported.graph)
    present = {(o.domain or "") for o in out.opset_import}
    for opset in exported.opset_import:
        if (opset.domain or "") not in present:
            out.opset_import.append(opset)
    return out


def tidy_graph(graph: onnx.GraphProto, keep_unused_initializers: bool = False) -> None:
    """Remove dead nodes and unused initializers, then sort nodes topologically (stable), recursively."""
    for node in graph.node:
        for sub in subgraphs(node):
            tidy_graph(sub)
    nodes = list(graph.node)
    reads = [set(node_reads(n)) for n in nodes]

    live_names = {o.name for o in graph.output}
    live = [False] * len(nodes)
    changed = True
    while changed:  # backward liveness; the graph may be unsorted, so iterate to a fixed point
        changed = False
        for i in reversed(range(len(nodes))):
            if not live[i] and any(out in live_names for out in nodes[i].output if out):
                live[i] = True
                live_names |= reads[i]
                changed = True
    kept = [i for i in range(len(nodes)) if live[i]]

    producer = {out: i for i in kept for out in nodes[i].output if out}
    deps = {i: {producer[name] for name in reads[i] if name in producer and producer[name] != i} for i in kept}
    users: dict[int, list[int]] = {i: [] for i in kept}
    for i, ds in deps.items():
        for d in ds:
            users[d].append(i)
    pending = {i: len(ds) for i, ds in deps.items()}
    ready = [i for i in kept if pending[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(kept):
        raise ValueError(f"graph {graph.name!r} has a cycle")

    if order != list(range(len(nodes))):
        new_nodes = [nodes[i] for i in order]
        copies = [onnx.NodeProto() for _ in new_nodes]
        for c, n in zip(copies, new_nodes):
            c.CopyFrom(n)
        del graph.node[:]
        graph.node.extend(copies)

    if not keep_unused_initializers:
        inputs = {i.name for i in graph.input}
        used = live_names
        unused = [k for k, t in enumerate(graph.initializer) if t.name not in used and t.name not in inputs]
        for k in reversed(unused):
            del graph.initializer[k]
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for n in graph.node:
        names.update(n.output)
    stale = [k for k, v in enumerate(graph.value_info) if v.name not in names]
    for k in reversed(stale):
        del graph.value_info[k]


def tidy_model(model: onnx.ModelProto) -> None:
    """Tidy the main graph and every subgraph in place."""
    tidy_graph(model.graph)
