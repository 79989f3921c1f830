"""Run a chain of methods on a model: validate options first, then apply, tidy and check each step."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxshrink.errors import OnnxShrinkError, PluginError, UsageError, one_line
from onnxshrink.ir.external import data_bytes, external_tensors
from onnxshrink.ir.tensors import stored_tensors
from onnxshrink.ir.walk import op_histogram
from onnxshrink.plugin.context import Context, ProgressFactory, no_progress
from onnxshrink.plugin.method import Options, PluginSpec
from onnxshrink.plugin.registry import MethodInfo, Registry
from onnxshrink.toolkit.runtime import cpu_session, session_options
from onnxshrink.toolkit.tidy import tidy_model


@dataclass
class PreparedStep:
    """A method with its validated options, ready to run."""

    info: MethodInfo
    options: dict[str, Any]

    @property
    def name(self) -> str:
        return self.info.cls.name


@dataclass
class StepResult:
    plugin: str
    options: dict[str, Any]
    seconds: float
    stats: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "options": dict(self.options),
            "seconds": round(self.seconds, 4),
            "stats": self.stats,
            "warnings": self.warnings,
        }


def prepare_steps(specs: Sequence[PluginSpec], registry: Registry) -> list[PreparedStep]:
    """Resolve every method and validate every option before anything runs (UsageError on the first bad one)."""
    steps = []
    for spec in specs:
        info = registry.get(spec.plugin)
        steps.append(PreparedStep(info, info.cls.validate_options(spec.options)))
    return steps


def run_steps(
    model: onnx.ModelProto,
    steps: Sequence[PreparedStep],
    *,
    seed: int = 0,
    calibration: Callable[[], Sequence[dict[str, np.ndarray]]] | None = None,
    calibration_is_synthetic: bool = True,
    progress: ProgressFactory | None = None,
    log: Callable[[str], None] | None = None,
    check_runtime: bool = True,
) -> list[StepResult]:
    """Apply ``steps`` to ``model`` in place, in order; tidy and check the model after each one.

    A step that raises, returns something that is not a JSON-ready dict, or leaves a model that
    onnx.checker or onnxruntime rejects is a ``PluginError`` naming it. When onnxruntime cannot load the
    input itself, see :func:`_runtime_problem`.
    """
    results = []
    cache: dict[str, list[dict[str, np.ndarray]]] = {}

    def shared_calibration() -> list[dict[str, np.ndarray]]:
        if "feeds" not in cache:
            cache["feeds"] = list(calibration()) if calibration else []
        return cache["feeds"]

    interface = interface_signature(model)
    deferred = _has_external_tensors(model) or model_data_bytes(model) > IN_MEMORY_CHECK_LIMIT
    if deferred:  # checking in memory would serialize (or read in) the whole model after every step
        (log or (lambda message: None))("large model: onnx.checker and onnxruntime check the saved file once, by path")
        strict, runtime_problem, check_runtime = False, None, False
    else:
        strict = passes_full_check(model)
        runtime_problem = _runtime_problem(model) if check_runtime and steps else None
    for index, step in enumerate(steps):
        ctx = Context(
            plugin=step.name,
            seed=seed,
            step=index,
            calibration=shared_calibration if calibration else None,
            calibration_is_synthetic=calibration_is_synthetic,
            progress=progress,
            log=log,
        )
        if runtime_problem and index == 0:
            custom = sorted(op for op in op_histogram(model) if "::" in op)
            kept = f"; custom-domain ops kept as they are: {', '.join(custom)}" if custom else ""
            ctx.warn(f"{runtime_problem}{kept}; outputs are checked with onnx.checker only")
        started = time.perf_counter()
        try:
            with (progress or no_progress)(
                step.name, None, ""
            ):  # off a terminal: start/heartbeat/end lines for long steps
                stats = step.info.cls().apply(model, Options(step.options, step.name), ctx)
        except OnnxShrinkError:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any plugin failure (sys.exit too) is reported naming the plugin
            if runtime_problem and type(exc).__module__.startswith("onnxruntime"):
                # the method runs the model, and onnxruntime cannot load the input: the input's limit, not a crash
                raise UsageError(f"plugin {step.name!r} needs to run the model, but {runtime_problem}") from exc
            raise PluginError(step.name, f"failed: {type(exc).__name__}: {exc}") from exc
        stats = {} if stats is None else stats
        _check_stats(step.name, stats)
        try:
            tidy_model(model)
        except Exception as exc:  # noqa: BLE001
            raise PluginError(step.name, f"left a graph that cannot be tidied: {type(exc).__name__}: {exc}") from exc
        check_interface(interface, model, step.name)
        if not deferred:
            check_model(model, step.name, runtime=check_runtime and runtime_problem is None, strict=strict)
        results.append(StepResult(step.name, step.options, time.perf_counter() - started, stats, ctx.warnings))
    return results


def _check_stats(plugin: str, stats: Any) -> None:
    if not isinstance(stats, dict):
        raise PluginError(plugin, f"apply() must return a dict of stats, not {type(stats).__name__}")
    try:
        json.dumps(stats, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise PluginError(plugin, f"apply() returned stats that are not JSON-serialisable: {exc}") from None


INFER_WITH_DATA_LIMIT = 64 << 20  # bytes of model up to which the output check infers shapes with the weights
IN_MEMORY_CHECK_LIMIT = 1 << 30  # bytes of tensor data above which checks run on the saved file instead


def model_data_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data, in memory or still in external files."""
    return sum(data_bytes(t) for t in stored_tensors(model))


def _has_external_tensors(model: onnx.ModelProto) -> bool:
    """A model edited with its data still on disk (a large one): checked after saving, by path."""
    return bool(external_tensors(model))


def check_saved(path: str, plugins: Sequence[str]) -> None:
    """onnx.checker and an onnxruntime CPU session, by path, on a saved model (large models)."""
    chain = " -> ".join(plugins) or "the chain"
    try:
        onnx.checker.check_model(path)
    except Exception as exc:  # noqa: BLE001
        raise PluginError(chain, f"produced an invalid model: {one_line(exc)}") from exc
    options = session_options()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )  # load, not fold: memory stays ~ the file
    # Prepacking only re-lays out MatMul weights for speed (about 1 s per GB); graph, types, shapes,
    # kernels and every external tensor's location and length are still checked without it.
    options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise PluginError(chain, f"produced a model onnxruntime cannot load: {one_line(exc)}") from exc


Signature = dict[str, Any]  # "input"/"output": [(name, type, shape)], "inferred": see inferred_outputs


def interface_signature(model: onnx.ModelProto) -> Signature:
    """(name, element type, declared shape) of every graph input and output: what a method must keep.

    The shape is a tuple with the fixed size of each dimension and None for a dynamic one (named or
    not), or None when no shape is declared. ``inferred`` holds what the outputs' producers make
    (:func:`inferred_outputs`), to catch a method that changes a tensor but not its declaration.
    Inputs that are also initializers (weights older exporters list as inputs) are not part of it: a
    caller need not feed them, and a method may make them plain constants.
    """

    def describe(values: Sequence[onnx.ValueInfoProto]) -> list[tuple[str, str, tuple[int | None, ...] | None]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dtype = (
                onnx.TensorProto.DataType.Name(t.elem_type)
                if v.type.HasField("tensor_type")
                else str(v.type.WhichOneof("value"))
            )
            shape = (
                tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)
                if t.HasField("shape")
                else None
            )
            out.append((v.name, dtype, shape))
        return out

    initializers = {t.name for t in model.graph.initializer}
    required = [
        v for v in model.graph.input if v.name not in initializers
    ]  # weights listed as inputs may become constants
    return {"input": describe(required), "output": describe(model.graph.output), "inferred": inferred_outputs(model)}


def _fmt(shape: tuple[int | None, ...] | None) -> str:
    return "no shape" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _interface_change(before: tuple, after: tuple) -> str:
    """What changed between two (name, dtype, shape) entries, in words."""
    (name, dtype, shape), (name2, dtype2, shape2) = before, after
    if name != name2:
        return f"{name!r} renamed to {name2!r}"
    if dtype != dtype2:
        return f"{name!r} type {dtype} -> {dtype2}"
    if shape is None or shape2 is None or len(shape) != len(shape2):
        return (
            f"{name!r} rank {len(shape) if shape is not None else '?'} -> "
            f"{len(shape2) if shape2 is not None else '?'} ({_fmt(shape)} -> {_fmt(shape2)})"
        )
    dims = [i for i, (a, b) in enumerate(zip(shape, shape2)) if a is not None and a != b]
    return (
        f"{name!r} declared dim {dims[0]} {shape[dims[0]]} -> {shape2[dims[0]] or '?'} ({_fmt(shape)} -> "
        f"{_fmt(shape2)})"
    )


def check_interface(before: Signature, model: onnx.ModelProto, plugin: str) -> None:
    """A method may not rename, retype, re-rank, add or drop graph inputs or outputs, nor change a fixed
    dimension they declare (a dynamic dimension may become fixed: that is shape inference, not a change)."""
    after = interface_signature(model)
    for kind in ("input", "output"):
        changed = [_interface_change(b, a) for b, a in zip(before[kind], after[kind]) if not _same_interface(b, a)]
        if len(before[kind]) != len(after[kind]):
            changed.append(f"{len(before[kind])} {kind}s -> {len(after[kind])}")
        if changed:
            raise PluginError(plugin, f"changed the model's interface: graph {kind} {'; '.join(changed)}")
    _check_inferred_outputs(before.get("inferred", {}), after["inferred"], model, plugin)


def _same_interface(before: tuple, after: tuple) -> bool:
    (name, dtype, shape), (name2, dtype2, shape2) = before, after
    if (name, dtype) != (name2, dtype2) or (shape is None) != (shape2 is None):
        return False
    if shape is None:
        return True
    return len(shape) == len(shape2) and all(a is None or a == b for a, b in zip(shape, shape2))


def inferred_outputs(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[int, ...] | None]]:
    """What onnx shape inference says each graph output's producer makes: (element type, fixed dims with 0
    for unknown, or None), ignoring the outputs' declarations. Empty when inference cannot tell."""
    if model.ByteSize() > IN_MEMORY_CHECK_LIMIT:
        return {}
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_output_types(model), strict_mode=False)
    except Exception:  # noqa: BLE001 - shape inference gives up on some valid models; onnxruntime checks later
        return {}
    out = {}
    for v in [*inferred.graph.value_info, *inferred.graph.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            t = v.type.tensor_type
            out[v.name] = (t.elem_type, tuple(d.dim_value for d in t.shape.dim) if t.HasField("shape") else None)
    return {o.name: out[o.name] for o in model.graph.output if o.name in out}


def _check_inferred_outputs(before: dict, after: dict, model: onnx.ModelProto, plugin: str) -> None:
    """An output whose producer now makes another type or shape than the graph declares (the declaration
    kept, the tensor changed). Only a change the method made counts: a mismatch the input already had is
    the exporter's."""
    for declared in model.graph.output:
        now = after.get(declared.name)
        if now is None or now == before.get(declared.name) or not declared.type.HasField("tensor_type"):
            continue
        want, (elem, dims) = declared.type.tensor_type, now
        if want.elem_type and elem != want.elem_type:
            raise PluginError(
                plugin,
                f"changed graph output {declared.name!r}: it now holds {onnx.TensorProto.DataType.Name(elem)}, the "
                f"model declares {onnx.TensorProto.DataType.Name(want.elem_type)}",
            )
        if dims is None or not want.HasField("shape"):
            continue
        if len(want.shape.dim) != len(dims):
            raise PluginError(
                plugin,
                f"changed graph output {declared.name!r}: it now has rank {len(dims)}, the model declares rank "
                f"{len(want.shape.dim)}",
            )
        for i, (w, g) in enumerate(zip(want.shape.dim, dims)):
            if w.dim_value > 0 and g > 0 and w.dim_value != g:
                raise PluginError(
                    plugin,
                    f"changed graph output {declared.name!r}: dim {i} is now {g}, the model declares {w.dim_value}",
                )


def _without_output_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the main graph whose outputs carry names only, so shape inference reports what the nodes
    produce rather than what the outputs declare. Weights are copied up to ``INFER_WITH_DATA_LIMIT``;
    above it, initializers keep only their type and dims."""
    probe = onnx.ModelProto()
    probe.ir_version = model.ir_version
    probe.opset_import.extend(model.opset_import)
    probe.functions.extend(model.functions)
    graph = probe.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    small = model.ByteSize() <= INFER_WITH_DATA_LIMIT
    for tensor in model.graph.initializer:  # large models: shapes and types only (Reshape targets then stay unknown)
        if small:
            graph.initializer.append(tensor)
            continue
        stub = graph.initializer.add()
        stub.name, stub.data_type = tensor.name, tensor.data_type
        stub.dims.extend(tensor.dims)
    for out in model.graph.output:
        graph.output.add().name = out.name
    return probe


def passes_full_check(model: onnx.ModelProto) -> bool:
    """Whether the model passes onnx.checker with strict shape inference (the bar for later steps)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception:  # noqa: BLE001
        return False
    return True


def check_model(model: onnx.ModelProto, plugin: str, *, runtime: bool = True, strict: bool = True) -> None:
    """onnx.checker (strict shape inference when the input passed it) and an ORT CPU session must accept the model."""
    try:
        onnx.checker.check_model(model, full_check=strict)
    except Exception as exc:  # noqa: BLE001
        raise PluginError(plugin, f"produced an invalid model: {one_line(exc)}") from exc
    if runtime:
        try:
            cpu_session(model)
        except Exception as exc:  # noqa: BLE001
            raise PluginError(plugin, f"produced a model onnxruntime cannot load: {one_line(exc)}") from exc


def _runtime_problem(model: onnx.ModelProto) -> str | None:
    """Why onnxruntime cannot load the input model, or None when it can.

    Such a model (custom-domain ops for another runtime, bfloat16 ops the CPU EP lacks) is still edited:
    its custom ops are kept as they are, a warning says so, each step's output is checked with
    onnx.checker only, and a method that fails running the model in onnxruntime is a usage error (exit 2).
    """
    try:
        cpu_session(model)
    except Exception as exc:  # noqa: BLE001
        return f"onnxruntime cannot load the input model ({one_line(exc, 300)})"
    return None
