"""Running models with onnxruntime on the CPU, for methods and checks."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxshrink.ir.external import external_tensors, inline_copy

PROTOBUF_SAFE_BYTES = 2**31 - 2**26


# onnxruntime's own log lines (with terminal colour codes) must not reach the user's terminal: its
# errors come back as the exception's message, which onnxshrink puts into its one-line error and the
# report. Level 4 (FATAL) for sessions: level 3 still prints the ERROR line a failing run logs.
SESSION_LOG_LEVEL = 4
DEFAULT_LOG_LEVEL = 4  # sessions made by other libraries (onnxruntime.quantization) log through it


def quiet_onnxruntime() -> None:
    """Silence onnxruntime's process-wide logger, which sessions without their own level use (for example
    the ones onnxruntime.quantization's calibrators create)."""
    ort.set_default_logger_severity(DEFAULT_LOG_LEVEL)


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Deterministic CPU session options: fixed threads, sequential execution, no onnxruntime log output."""
    quiet_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = SESSION_LOG_LEVEL
    return opts


def cpu_session(model: onnx.ModelProto | bytes | str, threads: int = 1) -> ort.InferenceSession:
    """An InferenceSession on the CPU EP from a proto, serialized bytes or a path.

    A proto whose tensors are still in external files (a large model being edited) is run from an
    in-memory copy with the data read in, or from a temporary folder when that passes 2 GB.
    """
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])

    if external_tensors(model):
        model = inline_copy(model)
    if model.ByteSize() < PROTOBUF_SAFE_BYTES:
        return ort.InferenceSession(
            model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
        )
    with tempfile.TemporaryDirectory(prefix="onnxshrink-run-") as folder:
        path = os.path.join(folder, "model.onnx")
        onnx.save_model(model, path, save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])


def run_model(
    model: onnx.ModelProto | bytes | str,
    feeds: Sequence[dict[str, np.ndarray]],
    output_names: Sequence[str] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Outputs of ``model`` for each feed, as ``{output name: array}``."""
    sess = cpu_session(model)
    names = list(output_names) if output_names else [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, dict(feed)))) for feed in feeds]


def intermediate_values(
    model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]
) -> dict[str, list[np.ndarray]]:
    """Values of the main graph's tensors ``names`` on each feed, by exposing them as outputs of a copy."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    outputs = run_model(probe, feeds, list(names))
    return {name: [out[name] for out in outputs] for name in names}
