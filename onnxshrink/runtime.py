"""Running models with onnxruntime on the CPU, for methods and checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Deterministic CPU session options: fixed threads, sequential execution, quiet logs."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def cpu_session(model: onnx.ModelProto | bytes | str, threads: int = 1) -> ort.InferenceSession:
    """An InferenceSession on the CPU EP from a proto, serialized bytes or a path."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])


def run_model(model: onnx.ModelProto | bytes | str, feeds: Sequence[dict[str, np.ndarray]], output_names: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    """Outputs of ``model`` for each feed, as ``{output name: array}``."""
    sess = cpu_session(model)
    names = list(output_names) if output_names else [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, dict(feed)))) for feed in feeds]


def intermediate_values(model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Values of the main graph's tensors ``names`` on each feed, by exposing them as outputs of a copy."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    outputs = run_model(probe, feeds, list(names))
    return {name: [out[name] for out in outputs] for name in names}
