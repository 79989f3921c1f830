"""``onnxshrink bench`` and ``onnxshrink gate``: measure and judge models that onnxshrink did not make."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from onnxshrink.ir.io import check_writable_file, load_model
from onnxshrink.reports import write_reports
from onnxshrink.run.shrink import REPORT_SCHEMA, providers_to_measure, tool_info
from onnxshrink.validate import bench_single, validate
from onnxshrink.validate.data import load_feeds
from onnxshrink.validate.gate import evaluate_gates, parse_gates
from onnxshrink.validate.size import measure_size


def _dataset(path: Path, data: Path | None, input_shapes: dict[str, tuple[int, ...]]):
    model = load_model(path).model  # also refuses unsafe or invalid files, naming them
    return load_feeds(str(data) if data else None, model, input_shapes=input_shapes or None)


def bench(
    models: Sequence[Path],
    *,
    data: Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    providers: Sequence[str] = ("cpu",),
    threads: int = 1,
    repeats: int = 20,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One model: size and latency. Two (baseline, candidate): the full validation section."""
    models = [Path(m) for m in models]
    for extra in models[1:]:
        load_model(extra)
    dataset = _dataset(models[0], data, input_shapes or {})
    if len(models) == 1:
        result = bench_single(models[0], dataset, providers, threads=threads, repeats=repeats, progress=log)
        return {"schema": REPORT_SCHEMA, "tool": tool_info(), "model": str(models[0]), **result}
    validation = validate(
        models[0], models[1], dataset, providers=tuple(providers), threads=threads, repeats=repeats, progress=log
    )
    return {
        "schema": REPORT_SCHEMA,
        "tool": tool_info(),
        "baseline": str(models[0]),
        "candidate": str(models[1]),
        "validation": validation,
    }


def gate_models(
    baseline: Path,
    candidate: Path,
    *,
    gates: list[str],
    allow_unavailable: bool = False,
    strict_latency: bool = False,
    data: Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    providers: Sequence[str] = ("cpu",),
    threads: int = 1,
    repeats: int = 20,
    report_json: Path | None = None,
    junit: Path | None = None,
    markdown: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Validate ``candidate`` against ``baseline``, apply the gate checks, write the reports asked for."""
    checks = parse_gates(gates)
    for report_path in (report_json, junit, markdown):
        if report_path:
            check_writable_file(report_path)
    load_model(candidate)
    dataset = _dataset(Path(baseline), data, input_shapes or {})
    validation = validate(
        baseline,
        candidate,
        dataset,
        providers=tuple(providers_to_measure(list(providers), checks)),
        threads=threads,
        repeats=repeats,
        progress=log,
    )
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "tool": tool_info(),
        "input": {"path": str(baseline), "size": measure_size(baseline)},
        "output": {"path": str(candidate), "size": measure_size(candidate)},
        "steps": [],
        "validation": validation,
    }
    report["gate"] = evaluate_gates(checks, report, allow_unavailable=allow_unavailable, strict_latency=strict_latency)
    write_reports(report, json_path=report_json, junit_path=junit, markdown_path=markdown)
    return report
