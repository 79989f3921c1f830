"""One shrink run as a Python API: load, apply the chain, save, validate, gate, report."""

from __future__ import annotations

import contextlib
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime

from . import __version__
from .context import ProgressFactory
from .errors import UsageError
from .gate import GateCheck, evaluate_gates
from .method import PluginSpec
from .model_io import check_output_path, check_writable_file, default_output_path, load_model, save_model
from .external import external_data_dir, inline_all, lazy_threshold
from .pipeline import check_saved, prepare_steps, run_steps
from .plugins import Registry, default_registry
from .recipe import Recipe, load_recipe, merge_cli
from .reports import write_reports
from .validate import validate
from .validate.data import DataSet, load_feeds, split_calibration
from .validate.size import measure_size

REPORT_SCHEMA = "onnxshrink.report/1"


def job_from(
    *,
    model: Path | None,
    steps: list[PluginSpec],
    recipe: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Recipe:
    """The run to do: an optional recipe file with command-line values on top (None = not given).

    Command-line ``--plugin`` steps replace the recipe's chain, ``--gate`` checks replace its checks;
    other values override one by one (see :func:`onnxshrink.recipe.merge_cli`).
    """
    base = load_recipe(recipe) if recipe else Recipe()
    job = merge_cli(base, {**(overrides or {}), "model": model, "steps": steps})
    if job.model is None:
        raise UsageError("missing MODEL; usage: onnxshrink MODEL --plugin NAME[:key=value,...] (or a recipe with model = ...)")
    return job


def tool_info() -> dict[str, Any]:
    return {
        "name": "onnxshrink",
        "version": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def shrink(
    job: Recipe,
    *,
    registry: Registry | None = None,
    progress: ProgressFactory | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``job`` and return the report (see docs/report.md). Raises OnnxShrinkError subclasses.

    Everything that can be checked is checked before anything is written: plugins and their options,
    gate expressions, the output path, the model and the data.
    """
    log = log or (lambda message: None)
    registry = registry or default_registry()
    registry.raise_for_errors()
    if not job.steps:
        raise UsageError(f"no --plugin given; known plugins: {', '.join(sorted(registry.methods))}")
    prepared = prepare_steps(job.steps, registry)
    checks = job.gate_checks
    if checks and not job.validate:
        raise UsageError("--gate needs validation; remove --no-validate")

    output = Path(job.output) if job.output else default_output_path(job.model)
    check_output_path(output, [Path(job.model)])
    for report_path in (job.report_json, job.junit, job.markdown):
        if report_path:
            check_writable_file(report_path)
    with external_data_dir(Path(job.model).resolve().parent):
        loaded = load_model(job.model, load_external=False)
        check_output_path(output, [Path(job.model), *loaded.external_files])
        input_size = _InBackground(measure_size, job.model)  # reads the input's weights while the chain runs
        lazy = loaded.external_bytes > lazy_threshold()
        if not lazy:
            inline_all(loaded.model)
        dataset = _load_data(job, loaded.model) if (job.validate or job.data_path) else None
        calibration = _Calibration(dataset, lambda: _load_data(job, loaded.model))

        started = time.perf_counter()
        results = run_steps(
            loaded.model,
            prepared,
            seed=job.seed,
            calibration=calibration.feeds,
            calibration_is_synthetic=dataset.synthetic if dataset is not None else True,
            progress=progress,
            log=log,
        )
        saving = (lambda total: progress(f"saving {output.name}", total, "B")) if progress else None
        written = save_model(loaded.model, output, external_data=True if loaded.uses_external_data else None, progress=saving)
    del loaded  # the edited tensors: free them before onnxruntime loads the output
    if lazy:
        with progress("checking the output (onnx.checker, onnxruntime)", None, "") if progress else contextlib.nullcontext():
            _check_saved_or_remove(output, written, [r.plugin for r in results])
    shrink_seconds = time.perf_counter() - started

    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "tool": tool_info(),
        "seed": job.seed,
        "input": {"path": str(job.model), "size": input_size.result()},
        "output": {"path": str(output), "files": [str(p) for p in written], "size": measure_size(output)},
        "steps": [r.to_dict() for r in results],
        "seconds": round(shrink_seconds, 4),
    }
    if job.validate and dataset is not None:
        log("validating: size, latency, fidelity")
        report["validation"] = validate(
            Path(job.model),
            output,
            calibration.evaluation_set(),
            providers=tuple(providers_to_measure(job.providers, checks)),
            threads=job.threads,
            repeats=job.repeats,
            progress=log,
        )
    if checks:
        report["gate"] = evaluate_gates(checks, report, allow_unavailable=job.allow_unavailable, strict_latency=job.strict_latency)
    write_reports(report, json_path=job.report_json, junit_path=job.junit, markdown_path=job.markdown)
    return report


def _check_saved_or_remove(output: Path, written: list[Path], plugins: list[str]) -> None:
    """Large models are checked once, by path, after saving; a failing output is removed again."""
    try:
        check_saved(str(output), plugins)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


class _InBackground:
    """``function(*args)`` run in a daemon thread (file reads and numpy release the GIL); ``result()``
    waits for it and returns its value or raises its exception."""

    def __init__(self, function: Callable[..., Any], *args: Any):
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(function, args), daemon=True)
        self._thread.start()

    def _run(self, function: Callable[..., Any], args: tuple) -> None:
        try:
            self._value = function(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class _Calibration:
    """Calibration data for methods, and the evaluation data left for validation.

    Only when a method asks for calibration data is ``--data`` split (see
    ``onnxshrink.validate.data.split_calibration``); otherwise every sample is used for evaluation.
    Without data, calibration feeds are synthetic, built only if a method asks.
    """

    def __init__(self, dataset: DataSet | None, synthetic: Callable[[], DataSet]):
        self.dataset, self._synthetic, self.used = dataset, synthetic, False

    def feeds(self) -> list[dict[str, Any]]:
        """Read-only arrays: a method that edits them in place fails at once instead of corrupting later steps."""
        self.used = True
        feeds = self._synthetic().feeds if self.dataset is None else split_calibration(self.dataset)[0].feeds
        for feed in feeds:
            for array in feed.values():
                array.flags.writeable = False
        return feeds

    def evaluation_set(self) -> DataSet:
        return split_calibration(self.dataset)[1] if self.used else self.dataset


def providers_to_measure(providers: list[str], checks: list[GateCheck]) -> list[str]:
    """The requested providers plus any a gate check names (so that check has something to judge)."""
    wanted = list(providers)
    for check in checks:
        if check.provider and check.provider not in wanted:
            wanted.append(check.provider)
    return wanted


def _load_data(job: Recipe, model: onnx.ModelProto) -> DataSet:
    source = str(job.data_path) if job.data_path else None
    return load_feeds(source, model, input_shapes=job.input_shapes or None, seed=job.seed)
