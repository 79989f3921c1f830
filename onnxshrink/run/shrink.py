"""One shrink run as a Python API: load, apply the chain, save, validate, gate, report."""

from __future__ import annotations

import contextlib
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
import onnxruntime

from onnxshrink.errors import ExitCode, OnnxShrinkError, UsageError, one_line
from onnxshrink.ir.external import external_data_dir, inline_all, lazy_threshold
from onnxshrink.ir.io import _commit as commit_files  # moves staged files into place, rolling back on failure
from onnxshrink.ir.io import check_output_path, check_writable_file, default_output_path, load_model, save_model
from onnxshrink.plugin.context import ProgressFactory
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.plugin.registry import Registry, default_registry
from onnxshrink.reports import write_reports
from onnxshrink.reports.html import write_html
from onnxshrink.run.pipeline import check_saved, prepare_steps, run_steps
from onnxshrink.run.recipe import Recipe, load_recipe, merge_cli
from onnxshrink.toolkit.runtime import quiet_onnxruntime
from onnxshrink.validate import validate
from onnxshrink.validate.data import DataSet, check_runs, load_feeds, split_calibration
from onnxshrink.validate.gate import GateCheck, evaluate_gates
from onnxshrink.validate.size import measure_size
from onnxshrink.validate.tensors import tensor_breakdown
from onnxshrink.version import __version__

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
    other values override one by one (see :func:`onnxshrink.run.recipe.merge_cli`).
    """
    base = load_recipe(recipe) if recipe else Recipe()
    job = merge_cli(base, {**(overrides or {}), "model": model, "steps": steps})
    if job.model is None:
        raise UsageError(
            "missing MODEL; usage: onnxshrink MODEL --plugin NAME[:key=value,...] (or a recipe with model = ...)"
        )
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
    gate expressions, the output path, the model and the data. The output is written into a staging
    folder beside it and moved into place only when the run ends with exit 0 or 1, so a run that fails
    (exit 2 or 3) leaves nothing at the output path and never replaces a file that was there. The
    reports asked for are written in every case; a failed run's report has an ``error`` section
    (``exit_code`` and ``message``) and whatever was measured before the failure.
    """
    quiet_onnxruntime()
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "tool": tool_info(),
        "seed": job.seed,
        "input": {"path": str(job.model) if job.model else None},
    }
    try:
        return _run(job, report, registry or default_registry(), progress, log or (lambda message: None))
    except OnnxShrinkError as exc:
        write_error_reports(report, exc.exit_code, exc.message, **_report_paths(job))
        raise
    except Exception as exc:  # noqa: BLE001 - an internal failure still gets its report, then propagates
        message = f"internal error: {type(exc).__name__}: {one_line(exc)}"
        write_error_reports(report, ExitCode.FAILURE, message, **_report_paths(job))
        raise


def write_error_reports(
    report: dict[str, Any],
    exit_code: int,
    message: str,
    *,
    json_path: Path | None = None,
    junit_path: Path | None = None,
    markdown_path: Path | None = None,
    html_path: Path | None = None,
) -> None:
    """The reports asked for, with ``error: {exit_code, message}``; a report that cannot be written is skipped
    (the run's own error is what the user must see)."""
    report = {**report, "error": {"exit_code": int(exit_code), "message": message}}
    if "output" in report:  # the candidate was staged, never moved into place
        report["output"] = {**report["output"], "files": []}
    for key, path in (("json_path", json_path), ("junit_path", junit_path), ("markdown_path", markdown_path)):
        if path:
            with contextlib.suppress(Exception):
                write_reports(report, **{key: path})
    if html_path:
        with contextlib.suppress(Exception):
            write_html(report, html_path)


def _report_paths(job: Recipe) -> dict[str, Any]:
    return {"json_path": job.report_json, "junit_path": job.junit, "markdown_path": job.markdown, "html_path": job.html}


def _run(
    job: Recipe,
    report: dict[str, Any],
    registry: Registry,
    progress: ProgressFactory | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    registry.raise_for_errors()
    if not job.steps:
        raise UsageError(f"no --plugin given; known plugins: {', '.join(sorted(registry.methods))}")
    prepared = prepare_steps(job.steps, registry)
    checks = job.gate_checks
    if checks and not job.validate:
        raise UsageError("--gate needs validation; remove --no-validate")

    output = Path(job.output) if job.output else default_output_path(job.model)
    check_output_path(output, [Path(job.model)])
    for report_path in (job.report_json, job.junit, job.markdown, job.html):
        if report_path:
            check_writable_file(report_path)
    with _staging_folder(output) as stage:
        staged = stage / output.name
        with external_data_dir(Path(job.model).resolve().parent):
            loaded = load_model(job.model, load_external=False)
            check_output_path(output, [Path(job.model), *loaded.external_files])
            input_size = _InBackground(measure_size, job.model)  # reads the input's weights while the chain runs
            lazy = loaded.external_bytes > lazy_threshold()
            if not lazy:
                inline_all(loaded.model)
            dataset = _load_data(job, loaded.model, log) if (job.validate or job.data_path) else None
            # a closure, not a partial: `del loaded` below must empty the cell to free the model
            calibration = _Calibration(dataset, lambda: _load_data(job, loaded.model, log))  # noqa: F821

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
            report["steps"] = [r.to_dict() for r in results]
            saving = (lambda total: progress(f"saving {output.name}", total, "B")) if progress else None
            written = save_model(
                loaded.model, staged, external_data=True if loaded.uses_external_data else None, progress=saving
            )
        del loaded  # the edited tensors: free them before onnxruntime loads the output
        if lazy:
            with _step(progress, "checking the output (onnx.checker, onnxruntime)"):
                check_saved(str(staged), [r.plugin for r in results])
        shrink_seconds = time.perf_counter() - started

        finals = [output.parent / p.name for p in written]
        report["input"]["size"] = input_size.result()
        report["output"] = {"path": str(output), "files": [str(p) for p in finals], "size": measure_size(staged)}
        report["steps"] = [r.to_dict() for r in results]
        report["seconds"] = round(shrink_seconds, 4)
        report["tensors"] = tensor_breakdown(job.model, staged)
        if job.validate and dataset is not None:
            log("validating: size, latency, fidelity")
            with _step(progress, "validating"):
                validation = validate(
                    Path(job.model),
                    staged,
                    calibration.evaluation_set(),
                    providers=tuple(providers_to_measure(job.providers, checks)),
                    threads=job.threads,
                    repeats=job.repeats,
                    progress=log,
                )
            report["validation"] = _unstage(validation, stage, output.parent)
        if checks:
            report["gate"] = evaluate_gates(
                checks, report, allow_unavailable=job.allow_unavailable, strict_latency=job.strict_latency
            )
        write_reports(report, json_path=job.report_json, junit_path=job.junit, markdown_path=job.markdown)
        if job.html:
            write_html(report, job.html)
        commit_files(stage, finals)
    return report


@contextlib.contextmanager
def _staging_folder(output: Path) -> Iterator[Path]:
    """A temporary folder beside ``output`` (same file system, so moving out of it is atomic), removed
    at the end with any folder this run had to create for it."""
    folder = output.parent if str(output.parent) else Path(".")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".onnxshrink-stage-", dir=folder))
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
    committed = False
    try:
        yield stage
        committed = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not committed:
            for path in created:  # deepest first
                with contextlib.suppress(OSError):
                    path.rmdir()


def _step(progress: ProgressFactory | None, description: str) -> contextlib.AbstractContextManager[Any]:
    return progress(description, None, "") if progress else contextlib.nullcontext()


def _unstage(section: Any, stage: Path, folder: Path) -> Any:
    """Messages that name the staged candidate name its final path instead."""
    if isinstance(section, dict):
        return {k: _unstage(v, stage, folder) for k, v in section.items()}
    if isinstance(section, list):
        return [_unstage(v, stage, folder) for v in section]
    if isinstance(section, str) and str(stage) in section:
        return section.replace(str(stage), str(folder))
    return section


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


def _load_data(job: Recipe, model: onnx.ModelProto, log: Callable[[str], None]) -> DataSet:
    source = str(job.data_path) if job.data_path else None
    dataset = load_feeds(source, model, input_shapes=job.input_shapes or None, seed=job.seed)
    check_runs(model, dataset)
    if dataset.synthetic:
        for note in dataset.warnings[1:]:  # what was chosen for the synthetic inputs
            log(f"synthetic inputs: {note}")
    return dataset
