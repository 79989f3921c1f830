"""Measurements int_quant decides with: output fidelity against the float model, CPU latency, file size."""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

FLOAT_OUTPUTS = (np.float16, np.float32, np.float64)


def synthetic_feeds(model: onnx.ModelProto, rng: np.random.Generator, count: int = 4) -> list[dict[str, np.ndarray]]:
    """Random inputs from the model's input types and shapes (symbolic dimensions become 1)."""
    initializers = {t.name for t in model.graph.initializer}
    feeds = []
    for _ in range(count):
        feed = {}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tensor.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            if tensor.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
                feed[value.name] = rng.standard_normal(shape).astype(dtype)
            elif tensor.elem_type == TensorProto.BOOL:
                feed[value.name] = np.ones(shape, dtype=bool)
            else:
                feed[value.name] = rng.integers(0, 2, size=shape).astype(dtype)
        feeds.append(feed)
    return feeds


def session(model: onnx.ModelProto | bytes, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 4  # errors come back as the exception; level 3 still prints them
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def session_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph onnxruntime's CPU EP runs after its load-time optimizations (saved in a temporary folder)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="onnxshrink-session-") as folder:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors come back as the exception; level 3 still prints them
        options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def outputs(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Every output of ``model`` on each feed."""
    sess = session(model)
    return [sess.run(None, feed) for feed in feeds]


def cosine(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Lowest cosine similarity over the float outputs (all feeds of one output flattened together).

    Identical outputs give 1.0 (also when both are all zeros); for integer outputs the fraction of
    equal elements stands in.
    """
    scores = []
    for index in range(len(reference[0]) if reference else 0):
        ref = np.concatenate([np.asarray(r[index]).ravel() for r in reference])
        cand = np.concatenate([np.asarray(c[index]).ravel() for c in candidate])
        if ref.dtype.type not in FLOAT_OUTPUTS:
            scores.append(float(np.mean(ref == cand)) if ref.size else 1.0)
            continue
        ref, cand = ref.astype(np.float64), cand.astype(np.float64)
        if not np.all(np.isfinite(cand)):
            scores.append(0.0)
            continue
        norms = np.linalg.norm(ref) * np.linalg.norm(cand)
        if norms == 0:
            scores.append(1.0 if np.array_equal(ref, cand) else 0.0)
        else:
            scores.append(float(np.dot(ref, cand) / norms))
    return min(scores) if scores else 1.0


def _pair_cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    """Cosine of one output on one feed (fraction of equal elements for integer outputs)."""
    ref, cand = np.asarray(ref), np.asarray(cand)
    if ref.dtype.type not in FLOAT_OUTPUTS:
        return float(np.mean(ref == cand)) if ref.size else 1.0
    ref, cand = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    if not np.all(np.isfinite(cand)):
        return 0.0
    norms = np.linalg.norm(ref) * np.linalg.norm(cand)
    if norms == 0:
        return 1.0 if np.array_equal(ref, cand) else 0.0
    return float(np.dot(ref, cand) / norms)


def worst_feed_cosines(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> list[float]:
    """Per output: the lowest cosine over the feeds (each feed compared on its own, not pooled)."""
    count = len(reference[0]) if reference else 0
    return [min(_pair_cosine(r[i], c[i]) for r, c in zip(reference, candidate)) for i in range(count)]


def worst_feed_cosine(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """The lowest per-feed cosine over every output: the number int_quant's choices are judged by."""
    scores = worst_feed_cosines(reference, candidate)
    return min(scores) if scores else 1.0


def top1_agreement(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float | None:
    """Share of rows whose arg-max agrees, for the first output when it looks like class scores (N, C)."""
    if not reference or np.asarray(reference[0][0]).ndim != 2 or np.asarray(reference[0][0]).shape[-1] < 2:
        return None
    ref = np.concatenate([np.argmax(r[0], axis=-1) for r in reference])
    cand = np.concatenate([np.argmax(c[0], axis=-1) for c in candidate])
    return float(np.mean(ref == cand))


@dataclass(frozen=True)
class Score:
    """How one candidate's outputs compare with the float model's on a judge's feeds."""

    per_output: list[float]  # worst per-feed cosine of each output
    top1: float | None

    @property
    def cosine(self) -> float:
        return min(self.per_output) if self.per_output else 1.0


@dataclass
class Judge:
    """Scores candidates on fixed feeds against the float outputs on them, running each distinct model once.

    The auto search builds some models twice (every layer quantized is both the plain storage
    candidate and mixed precision's first attempt; the chosen mix is measured again as the winner),
    and each run over the feeds of a large model costs seconds.
    """

    feeds: Sequence[dict[str, np.ndarray]]
    reference: list[list[np.ndarray]]
    _scores: dict[bytes, Score] = field(default_factory=dict)

    def score(self, model: onnx.ModelProto) -> Score:
        key = hashlib.sha256(model.SerializeToString(deterministic=True)).digest()
        if key not in self._scores:
            candidate = outputs(model, self.feeds)
            self._scores[key] = Score(
                worst_feed_cosines(self.reference, candidate), top1_agreement(self.reference, candidate)
            )
        return self._scores[key]


def latency_ratio(
    baseline: onnx.ModelProto,
    candidate: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    *,
    rounds: int = 7,
    budget_s: float = 0.05,
) -> float:
    """Median of candidate/baseline time over interleaved rounds (A B A B …) on 1 thread, after warm-up.

    Each round times a batch of runs of each model sized to about ``budget_s`` seconds.
    """
    a, b = session(baseline), session(candidate)
    for sess in (a, b):
        for _ in range(3):
            sess.run(None, feed)
    start = time.perf_counter()
    a.run(None, feed)
    per_run = max(time.perf_counter() - start, 1e-6)
    runs = max(1, min(200, int(budget_s / per_run)))
    ratios = []
    for _ in range(rounds):
        times = []
        for sess in (a, b):
            start = time.perf_counter()
            for _ in range(runs):
                sess.run(None, feed)
            times.append(time.perf_counter() - start)
        ratios.append(times[1] / times[0])
    return float(statistics.median(ratios))


def model_bytes(model: onnx.ModelProto) -> int:
    return model.ByteSize()
