"""One shrink run as a Python API: load, apply the chain, save, validate, gate, report."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime

from . import __version__
from .context import ProgressFactory
from .errors import UsageError
from .method import PluginSpec
from .model_io import check_output_path, default_output_path, load_model, save_model
from .pipeline import prepare_steps, run_steps
from .plugins import Registry, default_registry

REPORT_SCHEMA = "onnxshrink.report/1"


@dataclass
class ShrinkJob:
    """Everything one run needs; the CLI and recipes both build one."""

    model: Path
    steps: list[PluginSpec]
    output: Path | None = None
    seed: int = 0
    data: Path | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    validate: bool = True
    providers: list[str] = field(default_factory=lambda: ["cpu"])
    threads: int = 1
    repeats: int = 20
    gates: list[str] = field(default_factory=list)
    allow_unavailable: bool = False
    report_json: Path | None = None
    junit: Path | None = None
    markdown: Path | None = None


def job_from(
    *,
    model: Path | None,
    steps: list[PluginSpec],
    recipe: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> ShrinkJob:
    """A job from an optional recipe with command-line values on top (a value of None means "not given").

    Command-line ``--plugin`` steps replace the recipe's chain; other values override one by one.
    """
    job = _job_from_recipe(recipe) if recipe else ShrinkJob(model=None, steps=[])  # type: ignore[arg-type]
    if model is not None:
        job.model = Path(model)
    if steps:
        job.steps = list(steps)
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(job, key, value)
    if job.model is None:
        raise UsageError("missing MODEL; usage: onnxshrink MODEL --plugin NAME[:key=value,...] (or a recipe with model = ...)")
    return job


def _job_from_recipe(path: Path) -> ShrinkJob:
    from .recipe import load_recipe

    recipe = load_recipe(path)
    return ShrinkJob(
        model=recipe.model,
        steps=[PluginSpec(step.plugin, dict(step.options)) for step in recipe.steps],
        output=recipe.output,
        seed=recipe.seed,
        data=recipe.data_path,
        input_shapes=dict(recipe.input_shapes),
        validate=recipe.validate,
        providers=list(recipe.providers),
        threads=recipe.threads,
        repeats=recipe.repeats,
        gates=list(recipe.gates),
        allow_unavailable=recipe.allow_unavailable,
        report_json=recipe.report_json,
        junit=recipe.junit,
        markdown=recipe.markdown,
    )


def tool_info() -> dict[str, Any]:
    return {
        "name": "onnxshrink",
        "version": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def shrink(
    job: ShrinkJob,
    *,
    registry: Registry | None = None,
    progress: ProgressFactory | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``job`` and return the report (see docs/report.md). Raises OnnxShrinkError subclasses.

    Everything that can be checked is checked before anything is written: plugins and their options,
    gate expressions, the output path, the model and the data.
    """
    from .validate.size import measure_size

    log = log or (lambda message: None)
    registry = registry or default_registry()
    registry.raise_for_errors()
    if not job.steps:
        known = ", ".join(sorted(registry.methods))
        raise UsageError(f"no --plugin given; known plugins: {known}")
    prepared = prepare_steps(job.steps, registry)
    checks = _parse_gates(job.gates)
    if checks and not job.validate:
        raise UsageError("--gate needs validation; remove --no-validate")

    output = Path(job.output) if job.output else default_output_path(job.model)
    check_output_path(output, [Path(job.model)])
    loaded = load_model(job.model)
    check_output_path(output, [Path(job.model), *loaded.external_files])
    dataset = _load_data(job, loaded.model) if (job.validate or job.data) else None

    calibration, synthetic = None, True
    if dataset is not None:
        from .validate.data import split_calibration

        calib_set, eval_set = split_calibration(dataset)
        calibration, synthetic = (lambda: calib_set.feeds), dataset.synthetic
    else:
        eval_set = None

    started = time.perf_counter()
    results = run_steps(
        loaded.model,
        prepared,
        seed=job.seed,
        calibration=calibration,
        calibration_is_synthetic=synthetic,
        progress=progress,
        log=log,
    )
    written = save_model(loaded.model, output, external_data=True if loaded.uses_external_data else None)
    shrink_seconds = time.perf_counter() - started

    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "tool": tool_info(),
        "seed": job.seed,
        "input": {"path": str(job.model), "size": measure_size(job.model)},
        "output": {"path": str(output), "files": [str(p) for p in written], "size": measure_size(output)},
        "steps": [r.to_dict() for r in results],
        "seconds": round(shrink_seconds, 4),
    }
    if job.validate and eval_set is not None:
        from .validate import validate

        log("validating: size, latency, fidelity")
        report["validation"] = validate(
            Path(job.model),
            output,
            eval_set,
            providers=tuple(job.providers),
            threads=job.threads,
            repeats=job.repeats,
            progress=log,
        )
    if checks:
        from .gate import evaluate_gates

        report["gate"] = evaluate_gates(checks, report, allow_unavailable=job.allow_unavailable)
    write_reports(report, job)
    return report


def _parse_gates(gates: list[str]) -> list[Any]:
    if not gates:
        return []
    from .gate import parse_gate

    return [parse_gate(g) for g in gates]


def _load_data(job: ShrinkJob, model: onnx.ModelProto):
    from .validate.data import load_feeds

    return load_feeds(str(job.data) if job.data else None, model, input_shapes=job.input_shapes or None, seed=job.seed)


def write_reports(report: dict[str, Any], job: ShrinkJob) -> None:
    """Write the JSON, JUnit and Markdown reports that the job asks for."""
    if job.report_json:
        from .reports import write_json

        write_json(report, job.report_json)
    if job.junit and "gate" in report:
        from .reports import write_junit

        write_junit(report["gate"], job.junit, report=report)
    if job.markdown:
        from .reports import write_markdown

        write_markdown(report, job.markdown)

