"""Static int8: QDQ with calibrated activation ranges, through onnxruntime.quantization.

onnxruntime's calibrators (MinMax, Percentile, Entropy) and its ``QDQQuantizer`` (the QDQ placement
its CPU EP fuses into QLinearConv / QLinearMatMul / QGemm) do the core work. Around them, what broke
``quantize_static`` on real exported models is fixed here:

- weights in Constant nodes are turned into initializers first (it expects initializers);
- per-channel weights need opset 13: the model is upgraded with onnx.version_converter, or, when
  that is not allowed or fails, weights fall back to per-tensor (never ``axis`` at opset 11/12);
- weights inside If/Loop branches (which it never quantizes) and anything else it leaves float get
  the folded storage form afterwards, so the file always shrinks;
- calibrated ranges that are blown up (an attention mask's ±1e38, a Concat of tensors on very
  different scales, a non-weighted op writing a graph output) keep the tensors involved in float;
- every temporary file lives in a private folder that is removed, and the working folder is not
  touched (the run happens with that folder as the current directory).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

import onnxshrink

from .targets import DEFAULT_DOMAINS, WEIGHTED_OPS, node_label

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# A calibrated |value| at or above this is not an activation but a sentinel (masks use -1e4 .. -3.4e38).
RANGE_LIMIT = 1.0e4
# Concat inputs whose ranges differ more than this share one scale badly (boxes 0-320 with scores 0-1).
CONCAT_SCALE_RATIO = 64.0


@dataclass
class StaticSettings:
    calibration: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    symmetric: bool = True
    activation_type: str = "uint8"
    reduce_range: bool = False
    op_types: tuple[str, ...] = WEIGHTED_OPS
    opset_upgrade: bool = True
    qdq_ops: str = "all"  # "all": every op onnxruntime can run quantized; "weighted": weight layers only


def qdq_op_types(settings: StaticSettings) -> list[str]:
    """Op types given to onnxruntime's QDQ quantizer: the weight layers chosen, plus (qdq_ops=all) every
    other op its registries know (Add, Relu, pooling, Concat, Reshape...), as ``quantize_static`` does,
    so that integer kernels chain without float round trips."""
    ops = list(settings.op_types)
    if settings.qdq_ops == "all":
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        ops += sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - set(WEIGHTED_OPS))
    return ops


@dataclass
class Calibrated:
    """A float model ready for QDQ: pre-processed, calibrated, with the nodes that must stay float."""

    model: onnx.ModelProto
    ranges: object  # onnxruntime.quantization.TensorsData
    per_channel: bool
    unsafe_nodes: dict[str, str] = field(default_factory=dict)  # node label → why it stays float
    notes: list[str] = field(default_factory=list)
    feeds: int = 0
    samples: int = 0  # rows over all feeds (first dimension of the first input)


@contextlib.contextmanager
def private_folder() -> Iterator[str]:
    """A temporary folder that is also the current directory, both restored and removed afterwards."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="onnxshrink-static-") as folder:
        os.chdir(folder)
        try:
            with _quiet_ort():
                yield folder
        finally:
            os.chdir(previous)


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """Keep onnxruntime.quantization's chatter off the user's terminal: its advice (root logger), its
    calibrators' progress (print to stdout) and its sessions' warnings."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    ort.set_default_logger_severity(4)  # 3 still prints the error line of a failing run
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default
        logging.disable(previous)


def calibrate(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], settings: StaticSettings) -> Calibrated:
    """Pre-process a copy of ``model`` (Constant weights → initializers, opset, BN folding) and calibrate it."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    notes: list[str] = []
    work = onnx.ModelProto()
    work.CopyFrom(model)
    promoted = promote_constant_weights(work)
    if promoted:
        notes.append(f"{promoted} Constant-node weights turned into initializers for onnxruntime's quantizer")
    per_channel = settings.per_channel
    if per_channel and onnxshrink.model_opset(work) < 13:
        if settings.opset_upgrade:
            try:
                work = onnxshrink.upgrade_opset(work, 13)
                notes.append("opset upgraded to 13 for per-channel QDQ weights")
            except ValueError as exc:
                per_channel = False
                notes.append(f"per-tensor weights: per-channel QDQ needs opset 13 and {exc}")
        else:
            per_channel = False
            notes.append("per-tensor weights: per-channel QDQ needs opset 13 and opset_upgrade=false")
    if onnxshrink.model_opset(work) < 10:
        try:
            work = onnxshrink.upgrade_opset(work, 10)
            notes.append("opset upgraded to 10 for QuantizeLinear/DequantizeLinear")
        except ValueError as exc:
            raise onnxshrink.UsageError(f"plugin 'int_quant': static QDQ needs opset 10 or later and {exc}") from None
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[settings.calibration]
    extra = {"percentile": settings.percentile, "symmetric": False} if settings.calibration == "percentile" else {}
    with private_folder() as folder:
        work = optimize_for_quantization(work, folder)
        source = os.path.join(folder, "model.onnx")
        onnx.save_model(work, source)
        calibrator = create_calibrator(
            source,
            None,
            augmented_model_path=os.path.join(folder, "augmented.onnx"),
            calibrate_method=method,
            providers=["CPUExecutionProvider"],
            extra_options=extra,
        )
        calibrator.collect_data(_Reader(feeds))
        ranges = calibrator.compute_data()
        del calibrator
    name_unnamed_nodes(work)
    samples = sum(_rows(feed) for feed in feeds)
    return Calibrated(
        work, ranges, per_channel, unsafe_ranges(work, ranges, qdq_op_types(settings)), notes, len(feeds), samples
    )


def quantize_calibrated(
    calibrated: Calibrated,
    settings: StaticSettings,
    *,
    exclude_nodes: Sequence[str] = (),
    only_nodes: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """QDQ on a copy of the calibrated model with onnxruntime's QDQQuantizer (no recalibration)."""
    from onnxruntime.quantization import QDQQuantizer, QuantType

    model = onnx.ModelProto()
    model.CopyFrom(calibrated.model)
    names = {node_label(n): n.name for n in model.graph.node}
    excluded = {names.get(label, label) for label in (*exclude_nodes, *calibrated.unsafe_nodes)}
    if settings.qdq_ops == "weighted":
        excluded |= activation_matmuls(model)
    activation = QuantType.QInt8 if settings.activation_type == "int8" else QuantType.QUInt8
    extra = {
        "WeightSymmetric": settings.symmetric,
        "ActivationSymmetric": settings.activation_type == "int8",
    }
    # np.errstate: onnxruntime computes parameters for every calibrated tensor, sentinels included
    with private_folder(), np.errstate(all="ignore"):
        quantizer = QDQQuantizer(
            model,
            calibrated.per_channel,
            settings.reduce_range,
            QuantType.QInt8 if settings.symmetric else QuantType.QUInt8,
            activation,
            calibrated.ranges,
            [names.get(n, n) for n in only_nodes] if only_nodes is not None else [],
            sorted(excluded),
            qdq_op_types(settings),
            extra,
        )
        quantizer.quantize_model()
        out = quantizer.model.model
    _drop_unused_opsets(out, keep=calibrated.model)
    return out


def activation_matmuls(model: onnx.ModelProto) -> set[str]:
    """MatMuls of two activations (attention scores, context): not weight layers; qdq_ops=weighted leaves
    them float (onnxruntime's MatMulConstBOnly option does this for QOperator models only)."""
    constants = {t.name for t in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input)}


def name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """Give every node a name (its label) so onnxruntime's quantizer can include or exclude it."""
    taken = onnxshrink.all_names(model)
    for g, _ in onnxshrink.iter_graphs(model.graph):
        for node in g.node:
            if not node.name:
                node.name = onnxshrink.unique_name(taken, node_label(node))


def promote_constant_weights(model: onnx.ModelProto) -> int:
    """Turn the main graph's float Constant nodes (rank ≥ 1) into initializers of the same name."""
    g = model.graph
    moved = 0
    keep = []
    for node in g.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if (
            node.op_type == "Constant"
            and node.domain in DEFAULT_DOMAINS
            and value is not None
            and value.dims
            and value.data_type in onnxshrink.FLOAT_TYPES
        ):
            tensor = TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            g.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    if moved:
        del g.node[:]
        g.node.extend(keep)
    return moved


def optimize_for_quantization(model: onnx.ModelProto, folder: str) -> onnx.ModelProto:
    """onnxruntime's basic (EP-independent) graph optimizations, e.g. BatchNormalization folded into Conv,
    as ``quant_pre_process`` does; kept in ``folder``. Models with float16 tensors are left as they are
    (the CPU EP would insert Casts)."""
    if any(t.data_type == TensorProto.FLOAT16 for t in onnxshrink.iter_tensors(model.graph)):
        return model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
    options.log_severity_level = 4  # errors come back as the exception; level 3 still prints them
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    _drop_unused_opsets(optimized, keep=model)
    return optimized


def unsafe_ranges(model: onnx.ModelProto, ranges, op_types: Sequence[str]) -> dict[str, str]:
    """Nodes (of ``op_types``, the ones that would get QuantizeLinear on their tensors) that must stay float.

    A tensor is unsafe to quantize when its calibrated range is not finite or reaches ``RANGE_LIMIT``
    (a sentinel such as an attention mask), or when it is a Concat of inputs whose ranges differ more
    than ``CONCAT_SCALE_RATIO`` times (one scale would erase the smaller ones). Nodes reading a weight
    that is also a graph input stay float too: a caller may feed another value; so does a Softmax
    whose output the calibrator recorded no range for.
    """
    bounds: dict[str, tuple[float, float]] = {}
    for name in ranges.keys():
        low, high = ranges[name].range_value
        bounds[name] = (float(np.min(low)), float(np.max(high)))
    bad: dict[str, str] = {}
    for tensor, (low, high) in bounds.items():
        if not (np.isfinite(low) and np.isfinite(high)) or max(abs(low), abs(high)) >= RANGE_LIMIT:
            bad[tensor] = (
                f"tensor {tensor!r} has calibrated range [{low:.3g}, {high:.3g}] (a sentinel such as an attention mask)"
            )
    for node in model.graph.node:
        if node.op_type == "Concat" and node.output[0] not in bad:
            spans = [max(abs(bounds[t][0]), abs(bounds[t][1])) for t in node.input if t in bounds]
            spans = [s for s in spans if s > 0]
            if len(spans) > 1 and max(spans) / min(spans) > CONCAT_SCALE_RATIO:
                bad[node.output[0]] = (
                    f"tensor {node.output[0]!r} concatenates inputs whose ranges differ {max(spans) / min(spans):.0f}x"
                )
    overridable = {i.name for i in model.graph.input} & {t.name for t in model.graph.initializer}
    unsafe: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        touched = [t for t in (*node.input, *node.output) if t in bad]
        if touched:
            unsafe[node_label(node)] = f"{bad[touched[0]]}; one int8 scale cannot hold it, kept float"
        elif any(name in overridable for name in node.input):
            unsafe[node_label(node)] = (
                "reads a weight that is also a graph input (a caller may feed another value); kept float"
            )
        elif node.op_type == "Softmax" and node.output[0] not in bounds:
            # onnxruntime's quantizer sets every Softmax output's range to [0, 1] and fails on one the
            # calibrator did not record (zoo swift_f0)
            unsafe[node_label(node)] = f"output {node.output[0]!r} has no calibrated range; kept float"
    return unsafe


def _drop_unused_opsets(model: onnx.ModelProto, keep: onnx.ModelProto) -> None:
    """Remove opset imports onnxruntime added that no node uses (keeps the original ones)."""
    used = {(n.domain or "") for g, _ in onnxshrink.iter_graphs(model.graph) for n in g.node}
    original = {(o.domain or "") for o in keep.opset_import}
    kept = [o for o in model.opset_import if (o.domain or "") in used | original | {""}]
    if len(kept) != len(model.opset_import):
        copies = [onnx.OperatorSetIdProto(domain=o.domain, version=o.version) for o in kept]
        del model.opset_import[:]
        model.opset_import.extend(copies)


def _rows(feed: dict[str, np.ndarray]) -> int:
    """Samples in one feed: the first dimension of its first input (1 for a scalar)."""
    first = np.asarray(next(iter(feed.values()))) if feed else np.zeros(())
    return int(first.shape[0]) if first.ndim else 1


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._feeds = self._feeds[start_index:end_index]
        self._next = 0


def qdq_weights(model: onnx.ModelProto) -> list[dict]:
    """Weights a QDQ model holds as integers: DequantizeLinear of an integer initializer read by a weighted op."""
    out = []
    for g, _ in onnxshrink.iter_graphs(model.graph):
        inits = {t.name: t for t in g.initializer}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in g.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        for node in g.node:
            if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
                continue
            quantized = inits[node.input[0]]
            users = [
                u
                for u in readers.get(node.output[0], [])
                if u.op_type in WEIGHTED_OPS and list(u.input).index(node.output[0]) == 1
            ]
            if not users or quantized.data_type not in (TensorProto.INT8, TensorProto.UINT8):
                continue
            scale = numpy_helper.to_array(inits[node.input[1]])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            kind = "int8 symmetric" if quantized.data_type == TensorProto.INT8 else "uint8 asymmetric"
            scheme = f"{kind} per-channel(axis={axis})" if scale.ndim else f"{kind} per-tensor"
            out.append(
                {
                    "tensor": quantized.name,
                    "layers": [node_label(u) for u in users],
                    "op_types": sorted({u.op_type for u in users}),
                    "form": "qdq",
                    "scheme": scheme,
                    "shape": list(quantized.dims),
                    "bytes_before": 4 * int(np.prod(quantized.dims)),
                    "bytes_after": len(quantized.raw_data) + scale.nbytes,
                }
            )
    return out
