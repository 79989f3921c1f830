"""Who produces and who reads each tensor of one graph, built once per edit instead of per question."""

from __future__ import annotations

import onnx

from onnxshrink.ir.walk import node_reads


class GraphIndex:
    """Producers and readers of the tensors of one graph (its nodes; subgraph reads count as reads by
    the node holding the subgraph). Build a new index after editing the graph: it does not follow
    edits."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self._producers: dict[str, onnx.NodeProto] = {}
        self._positions: dict[str, int] = {}
        self._readers: dict[str, list[onnx.NodeProto]] = {}
        for position, node in enumerate(graph.node):
            for name in node.output:
                if name:
                    self._producers[name] = node
                    self._positions[name] = position
            for name in dict.fromkeys(node_reads(node)):
                self._readers.setdefault(name, []).append(node)

    def producer(self, name: str) -> onnx.NodeProto | None:
        """The node that outputs ``name``, or None (a graph input, an initializer or an outer tensor)."""
        return self._producers.get(name)

    def position(self, name: str) -> int | None:
        """Where the node producing ``name`` stands in ``graph.node``, or None."""
        return self._positions.get(name)

    def readers(self, name: str) -> list[onnx.NodeProto]:
        """The nodes that read ``name`` (each once, in graph order)."""
        return list(self._readers.get(name, ()))


def producer(graph: onnx.GraphProto, name: str) -> onnx.NodeProto | None:
    """The node of ``graph`` that outputs ``name``, or None (an input, initializer or outer tensor).

    One question about one graph; asking about many tensors, build a :class:`GraphIndex` once."""
    return next((n for n in graph.node if name in n.output), None)
