"""Run a chain of methods on a model: validate options first, then apply, tidy and check each step."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .context import Context, ProgressFactory
from .errors import OnnxShrinkError, PluginError
from .method import PluginSpec
from .plugins import MethodInfo, Registry
from .runtime import cpu_session
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
    onnx.checker or onnxruntime rejects is a ``PluginError`` naming it.
    """
    results = []
    cache: dict[str, list[dict[str, np.ndarray]]] = {}

    def shared_calibration() -> list[dict[str, np.ndarray]]:
        if "feeds" not in cache:
            cache["feeds"] = list(calibration()) if calibration else []
        return cache["feeds"]

    strict = passes_full_check(model)
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
        started = time.perf_counter()
        try:
            stats = step.info.cls().apply(model, dict(step.options), ctx)
        except OnnxShrinkError:
            raise
        except Exception as exc:  # noqa: BLE001 - any plugin failure is reported naming the plugin
            raise PluginError(step.name, f"failed: {type(exc).__name__}: {exc}") from exc
        stats = {} if stats is None else stats
        _check_stats(step.name, stats)
        try:
            tidy_model(model)
        except Exception as exc:  # noqa: BLE001
            raise PluginError(step.name, f"left a graph that cannot be tidied: {type(exc).__name__}: {exc}") from exc
        check_model(model, step.name, runtime=check_runtime, strict=strict)
        results.append(StepResult(step.name, step.options, time.perf_counter() - started, stats, ctx.warnings))
    return results


def _check_stats(plugin: str, stats: Any) -> None:
    if not isinstance(stats, dict):
        raise PluginError(plugin, f"apply() must return a dict of stats, not {type(stats).__name__}")
    try:
        json.dumps(stats, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise PluginError(plugin, f"apply() returned stats that are not JSON-serialisable: {exc}") from None


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
        raise PluginError(plugin, f"produced an invalid model: {_first_line(exc)}") from exc
    if runtime:
        try:
            cpu_session(model)
        except Exception as exc:  # noqa: BLE001
            raise PluginError(plugin, f"produced a model onnxruntime cannot load: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
