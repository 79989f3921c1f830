"""Running a model's main graph piece by piece, so only one piece's weights are in memory.

Methods that need a layer's inputs layer after layer (GPTQ, say) would otherwise run the whole model
once per layer: time grows with the square of the depth, and a model larger than memory cannot be
run at all. :class:`SegmentRunner` walks the graph forward instead. Asked for some tensors, it runs
only the nodes still needed to produce them, as a small model of their own (with just the weights
those nodes read, read from disk when the model keeps them there), keeps the values later nodes
still need, and drops the rest. Weights changed between two requests are seen by the nodes run
after the change, which is what sequential quantization needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxshrink.errors import UsageError
from onnxshrink.ir.external import external_tensors, inline_all
from onnxshrink.ir.walk import constant_value, iter_graphs, node_reads
from onnxshrink.toolkit.index import GraphIndex
from onnxshrink.toolkit.runtime import cpu_session

Override = Callable[[], np.ndarray]


class SegmentRunner:
    """Runs ``model``'s main graph forward over ``feeds`` (one dict of graph inputs per sample).

    ``values(names)`` returns ``{name: [value per feed]}``, running the nodes still needed to produce
    them. A value is kept only while a node not yet run reads it, so a name can be asked for while
    some node that reads it has not run yet. ``outputs()`` runs the rest and returns the graph
    outputs per feed. ``overrides`` maps weight names (main-graph initializers or Constant outputs)
    to functions returning the values to run with instead of the stored ones; it can be added to
    between requests.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        feeds: Sequence[Mapping[str, np.ndarray]],
        overrides: Mapping[str, Override] | None = None,
    ):
        self.model = model
        self.feeds = [dict(f) for f in feeds]
        self.overrides: dict[str, Override] = dict(overrides or {})
        self._values: dict[str, list[np.ndarray]] = {}
        self._done: set[str] = set()
        self.segments_run = 0
        for inp in model.graph.input:
            if self.feeds and all(inp.name in f for f in self.feeds):
                self._values[inp.name] = [f[inp.name] for f in self.feeds]
                self._done.add(inp.name)
        self._fed = set(self._values)

    def values(self, names: Iterable[str]) -> dict[str, list[np.ndarray]]:
        names = list(dict.fromkeys(names))
        missing = [n for n in names if n not in self._values]
        if missing:
            self._run(missing)
        result = {n: self._values[n] for n in names}
        self._forget_dead()
        return result

    def kept(self) -> list[str]:
        """Names whose values are held now (read by nodes not run yet, or graph outputs)."""
        return sorted(self._values)

    def outputs(self) -> list[dict[str, np.ndarray]]:
        names = [o.name for o in self.model.graph.output]
        values = self.values(names)
        return [{n: values[n][i] for n in names} for i in range(len(self.feeds))]

    # -- one segment ---------------------------------------------------------------------------

    def _constants(self) -> dict[str, onnx.TensorProto | onnx.NodeProto]:
        """Main-graph initializers (not fed) and Constant nodes, by the name they define."""
        graph = self.model.graph
        found: dict[str, onnx.TensorProto | onnx.NodeProto] = {
            t.name: t for t in graph.initializer if t.name not in self._values
        }
        for node in graph.node:
            if node.output and constant_value(node) is not None:
                found[node.output[0]] = node
        return found

    def _run(self, targets: list[str]) -> None:
        graph = self.model.graph
        constants = self._constants()
        index = GraphIndex(graph)
        chosen: dict[int, onnx.NodeProto] = {}
        stack = list(targets)
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen or name in self._values or name in constants:
                continue
            seen.add(name)
            node, position = index.producer(name), index.position(name)
            if node is None:
                raise UsageError(
                    f"tensor {name!r} is neither a graph input given in the data nor produced by a node of the main "
                    "graph"
                )
            if position not in chosen:
                chosen[position] = node
                stack.extend(node_reads(node))
        nodes = [chosen[i] for i in sorted(chosen)]
        produced = {out for node in nodes for out in node.output if out}
        keep = (self._needed_later(exclude=produced) | set(targets)) & produced
        segment, inputs = self._segment_model(nodes, constants, produced, keep)
        session = cpu_session(segment)
        names = sorted(keep)
        results: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for i in range(len(self.feeds)):
            feed = {n: self._values[n][i] for n in inputs}
            for name, value in zip(names, session.run(names, feed)):
                results[name].append(value)
        del session
        self._values.update(results)
        self._done.update(produced)
        self.segments_run += 1

    def _needed_later(self, exclude: set[str] = frozenset()) -> set[str]:
        """Names read by main-graph nodes not run yet (and not about to run), plus the graph outputs."""
        needed = {o.name for o in self.model.graph.output}
        for node in self.model.graph.node:
            outs = [o for o in node.output if o]
            if outs and not any(o in self._done or o in exclude for o in outs):
                needed.update(node_reads(node))
        return needed

    def _forget_dead(self) -> None:
        needed = self._needed_later() | self._fed  # the feeds stay: a value recomputed later may need them
        for name in [n for n in self._values if n not in needed]:
            del self._values[name]

    def _segment_model(self, nodes, constants, produced, keep) -> tuple[onnx.ModelProto, list[str]]:
        """The nodes as a model of their own: values run so far come in as inputs, weights as initializers."""
        inputs, inits, constant_nodes = [], [], []
        for name in dict.fromkeys(n for node in nodes for n in node_reads(node)):
            if name in produced:
                continue
            if name in self._values:
                inputs.append(name)
            elif name in constants:
                tensor = self._constant(name, constants[name])
                if isinstance(tensor, onnx.NodeProto):
                    constant_nodes.append(tensor)
                else:
                    inits.append(tensor)
        graph = helper.make_graph(
            [*constant_nodes, *nodes],
            "segment",
            [_value_info(name, self._values[name][0]) for name in inputs],
            [onnx.ValueInfoProto(name=name) for name in sorted(keep)],
            initializer=inits,
        )
        segment = helper.make_model(graph, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
        segment.functions.extend(self.model.functions)
        self._override_inside(segment)
        if external_tensors(segment):
            inline_all(segment)  # only this segment's weights, read from the model's data files
        return segment, inputs

    def _override_inside(self, segment: onnx.ModelProto) -> None:
        """Apply overrides to weights defined inside the segment's subgraphs (If/Loop/Scan bodies)."""
        if not self.overrides:
            return
        for g, outer in iter_graphs(segment.graph):
            if not outer:
                continue
            named = [(t.name, t) for t in g.initializer]
            named += [(n.output[0], v) for n in g.node if n.output and (v := constant_value(n)) is not None]
            for name, tensor in named:
                if name in self.overrides:
                    tensor.CopyFrom(_override_tensor(self.overrides[name], tensor.data_type, tensor.name))

    def _constant(self, name: str, definition: onnx.TensorProto | onnx.NodeProto) -> onnx.TensorProto | onnx.NodeProto:
        """The initializer a segment gets for ``name`` (an override's values, or a copy), or its Constant node."""
        stored = constant_value(definition) if isinstance(definition, onnx.NodeProto) else definition
        if name in self.overrides:
            return _override_tensor(self.overrides[name], stored.data_type, name)
        if isinstance(definition, onnx.NodeProto):
            return definition
        copy = onnx.TensorProto()
        copy.CopyFrom(definition)
        return copy


def _override_tensor(override: Override, data_type: int, name: str) -> onnx.TensorProto:
    values = np.asarray(override(), dtype=helper.tensor_dtype_to_np_dtype(data_type))
    return numpy_helper.from_array(values, name)


def _value_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    if not isinstance(value, np.ndarray):
        raise UsageError(
            f"tensor {name!r} is a {type(value).__name__}, not a tensor: this model cannot be run piece by piece"
        )
    elem = helper.np_dtype_to_tensor_dtype(value.dtype)
    return helper.make_tensor_value_info(name, elem, [None] * value.ndim)
