"""A self-contained HTML report: one file, no network at view time, charts drawn by an inlined Chart.js.

:func:`render_html` takes any saved report (shrink, gate, bench, or a tune run, told apart by
``schema`` and content) and returns the page. Sections, each left out when the report has nothing for
it: verdict and gate checks; headline numbers; where the bytes are (per op type, per layer, and a
sortable per-tensor table); latency per provider (the interleaved runs as a histogram, the ratio with
its interval); fidelity per output (worst and mean cosine, per-feed histogram); for tune, the Pareto
front and every trial; steps and data.

Safety: every text from the report is HTML-escaped; chart data travels as JSON inside a
``<script type="application/json">`` with ``<``, ``>`` and ``&`` written as ``\\u`` escapes, and the
page's scripts only ever set ``textContent``. A Content-Security-Policy allows the page's own scripts
(by hash) and nothing else: no network, no injected script. Same report, same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxshrink.errors import UsageError
from onnxshrink.reports import json_safe
from onnxshrink.reports._atomic import atomic_write_text
from onnxshrink.reports.html_page import Page, page_title
from onnxshrink.reports.html_sections import render_single
from onnxshrink.reports.html_tune import render_tune

__all__ = ["read_report", "report_kind", "render_html", "write_html"]

TUNE_SCHEMA = "onnxshrink.tune/1"


# --------------------------------------------------------------------------- entry points


def report_kind(report: Mapping[str, Any]) -> str:
    """``shrink``, ``gate``, ``bench`` (one model), ``compare`` (bench of two) or ``tune``.

    A mapping that is none of these is a UsageError saying what was expected.
    """
    schema = report.get("schema") if isinstance(report, Mapping) else None
    if schema == TUNE_SCHEMA:
        return "tune"
    if isinstance(schema, str) and schema.startswith("onnxshrink.report/"):
        if "steps" in report and "input" in report:
            return "shrink" if report.get("steps") or "gate" not in report else "gate"
        if "baseline" in report and "candidate" in report:
            return "compare"
        if "model" in report:
            return "bench"
    raise UsageError(
        f"not an onnxshrink report (schema {schema!r}): expected onnxshrink.report/1 from shrink, gate or bench, or "
        f"{TUNE_SCHEMA}"
    )


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML page (str). See the module docstring for what it shows."""
    report = json_safe(report)
    kind = report_kind(report)
    page = Page()
    if kind == "tune":
        render_tune(page, report)
    else:
        render_single(page, report, kind)
    return page.html(page_title(report, kind))


def read_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A saved JSON report, checked to be one :func:`render_html` knows; a UsageError naming the file otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"report {str(path)!r} is not JSON: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read report {str(path)!r}: {exc.strerror or exc}") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"report {str(path)!r} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(report, dict):
        raise UsageError(
            f"report {str(path)!r} is not an onnxshrink report: expected a JSON object, got {type(report).__name__}"
        )
    try:
        report_kind(report)
    except UsageError as exc:
        raise UsageError(f"report {str(path)!r} is {exc.message}") from None
    return report


def write_html(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render ``report`` and write it to ``path`` atomically."""
    return atomic_write_text(path, render_html(report))
