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

from .context import Context, ProgressFactory
from .errors import OnnxShrinkError, PluginError, UsageError, one_line
from .graph import op_histogram
from .method import PluginSpec
from .plugins import MethodInfo, Registry
from .runtime import cpu_session, session_options
from .tidy import tidy_model


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
            "options": self.options,
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
            stats = step.info.cls().apply(model, dict(step.options), ctx)
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


IN_MEMORY_CHECK_LIMIT = 1 << 30  # bytes of tensor data above which checks run on the saved file instead


def model_data_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data, in memory or still in external files."""
    from .external import data_bytes
    from .model_io import stored_tensors

    return sum(data_bytes(t) for t in stored_tensors(model))


def _has_external_tensors(model: onnx.ModelProto) -> bool:
    """A model edited with its data still on disk (a large one): checked after saving, by path."""
    from .external import external_tensors

    return bool(external_tensors(model))


def check_saved(path: str, plugins: Sequence[str]) -> None:
    """onnx.checker and an onnxruntime CPU session, by path, on a saved model (large models)."""
    chain = " -> ".join(plugins) or "the chain"
    try:
        onnx.checker.check_model(path)
    except Exception as exc:  # noqa: BLE001
        raise PluginError(chain, f"produced an invalid model: {one_line(exc)}") from exc
    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # load, not fold: memory stays ~ the file
    # Prepacking only re-lays out MatMul weights for speed (about 1 s per GB); graph, types, shapes,
    # kernels and every external tensor's location and length are still checked without it.
    options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise PluginError(chain, f"produced a model onnxruntime cannot load: {one_line(exc)}") from exc


def interface_signature(model: onnx.ModelProto) -> dict[str, list[tuple[str, str, int | None]]]:
    """(name, element type, rank) of every graph input and output: what a method must keep.

    Inputs that are also initializers (weights older exporters list as inputs) are not part of it: a
    caller need not feed them, and a method may make them plain constants."""

    def describe(values: Sequence[onnx.ValueInfoProto]) -> list[tuple[str, str, int | None]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dtype = onnx.TensorProto.DataType.Name(t.elem_type) if v.type.HasField("tensor_type") else str(v.type.WhichOneof("value"))
            out.append((v.name, dtype, len(t.shape.dim) if t.HasField("shape") else None))
        return out

    initializers = {t.name for t in model.graph.initializer}
    required = [v for v in model.graph.input if v.name not in initializers]
    return {"input": describe(required), "output": describe(model.graph.output)}


def check_interface(before: dict[str, list[tuple[str, str, int | None]]], model: onnx.ModelProto, plugin: str) -> None:
    """A method may not rename, retype, re-rank, add or drop graph inputs or outputs."""
    after = interface_signature(model)
    for kind in ("input", "output"):
        if before[kind] != after[kind]:
            changed = [f"{b} -> {a}" for b, a in zip(before[kind], after[kind]) if b != a]
            changed = changed or [f"{len(before[kind])} {kind}s -> {len(after[kind])}"]
            raise PluginError(plugin, f"changed the model's interface: graph {kind}s (name, type, rank) {'; '.join(changed)}")


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
