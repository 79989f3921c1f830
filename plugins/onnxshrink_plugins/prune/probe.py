"""A session whose weights can be swapped between runs, judged by the worst per-feed output cosine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

import onnxshrink

_FLOAT_KINDS = "f"
_SQUASHING = frozenset({"Softmax", "LogSoftmax", "Sigmoid"})
_SHAPE_ONLY = frozenset({"Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten"})


def logits_of_outputs(graph: onnx.GraphProto) -> list[str]:
    """Inputs of a Softmax, LogSoftmax or Sigmoid that makes a graph output (through shape-only ops).

    Probabilities hide what pruning does: a two-class softmax that stays near [1, 0] keeps a cosine
    of 1 while its logits move, so the budget judges these logits too.
    """
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type in _SHAPE_ONLY and node.input:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in _SQUASHING and node.input[0] not in found:
            found.append(node.input[0])
    return found


def worst_cosine(reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]]) -> float:
    """The lowest cosine similarity over every feed and every float output (each feed flattened on its own).

    Non-float outputs count only when the model has no float output: then the fraction of equal
    elements. A candidate with NaN or Inf where the reference is finite scores 0.
    """
    has_float = any(np.asarray(r).dtype.kind in _FLOAT_KINDS for r in (reference[0] if reference else ()))
    worst = 1.0
    for ref_outputs, cand_outputs in zip(reference, candidate):
        for ref, cand in zip(ref_outputs, cand_outputs):
            ref, cand = np.asarray(ref), np.asarray(cand)
            if ref.dtype.kind not in _FLOAT_KINDS:
                if not has_float:
                    worst = min(worst, float(np.mean(ref == cand)) if ref.size else 1.0)
                continue
            worst = min(worst, _cosine(ref, cand))
    return worst


def _cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    a, b = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(finite_a, finite_b):
        return 0.0
    a, b = a[finite_a], b[finite_b]
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.clip(a @ b / norm, -1.0, 1.0))


class SwappableSession:
    """The model on the CPU EP (1 thread) with chosen weights turned into overridable graph inputs.

    ``worst_cosine(feeds, overrides)`` runs ``feeds`` with some weights replaced by other values and
    compares the outputs (and the logits before a final Softmax/Sigmoid, see :func:`logits_of_outputs`)
    with those of the unchanged weights (computed once per feed list). Weights
    must be defined in the main graph (initializers, graph inputs or Constant nodes); readers inside
    subgraphs see the swapped values too.
    """

    def __init__(self, model: onnx.ModelProto, weights: Sequence[onnxshrink.WeightTensor]):
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        graph = probe.graph
        inputs = {v.name for v in graph.input}
        initializers = {t.name for t in graph.initializer}
        constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
        for weight in weights:
            if weight.name in inputs:
                continue
            if weight.name not in initializers:
                node = constants[weight.name]
                tensor = onnx.TensorProto()
                tensor.CopyFrom(weight.proto)
                tensor.name = weight.name
                graph.initializer.append(tensor)
                graph.node.remove(node)
            graph.input.append(onnx.helper.make_tensor_value_info(weight.name, weight.dtype, list(weight.shape)))
        outputs = {o.name for o in graph.output}
        for name in logits_of_outputs(graph):
            if name not in outputs:
                graph.output.append(onnx.ValueInfoProto(name=name))
        if probe.ir_version < 4:
            probe.ir_version = 4
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.runs = 0
        self._references: dict[int, list[list[np.ndarray]]] = {}

    def run(
        self, feeds: Sequence[Mapping[str, np.ndarray]], overrides: Mapping[str, np.ndarray] | None = None
    ) -> list[list[np.ndarray]]:
        self.runs += 1
        return [self.session.run(None, {**feed, **(overrides or {})}) for feed in feeds]

    def worst_cosine(self, feeds: Sequence[Mapping[str, np.ndarray]], overrides: Mapping[str, np.ndarray]) -> float:
        key = id(feeds)
        if key not in self._references:
            self._references[key] = self.run(feeds)
        return worst_cosine(self._references[key], self.run(feeds, overrides))
