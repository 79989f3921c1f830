"""Report writers: the JSON report, the gate as JUnit XML, a Markdown summary. All writes are atomic.

The JSON keeps the report's key order (indent 2) and is strict JSON: NaN and infinities become
``null``, paths become strings, tuples become lists.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from onnxshrink.reports._atomic import atomic_write_text
from onnxshrink.reports.junit import junit_error_xml, junit_xml, write_junit
from onnxshrink.reports.markdown import render_markdown, write_markdown

__all__ = [
    "atomic_write_text",
    "json_safe",
    "junit_error_xml",
    "junit_xml",
    "render_markdown",
    "report_json",
    "write_json",
    "write_junit",
    "write_markdown",
    "write_reports",
]


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts.

    NaN/±inf → None; Path → str; tuple/set → list; numpy scalars and arrays (duck-typed through
    ``item``/``tolist``) → Python values; mapping keys → str; anything else → ``str(value)``.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [json_safe(v) for v in sorted(value, key=str)]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return json_safe(value.tolist())
    if hasattr(value, "item") and callable(value.item):
        return json_safe(value.item())
    return str(value)


def report_json(report: Mapping[str, Any]) -> str:
    """The report as strict JSON text (insertion order, indent 2, trailing newline)."""
    return json.dumps(json_safe(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the report as strict JSON at ``path`` (atomically)."""
    return atomic_write_text(path, report_json(report))


def write_reports(
    report: Mapping[str, Any],
    *,
    json_path: str | os.PathLike[str] | None = None,
    junit_path: str | os.PathLike[str] | None = None,
    markdown_path: str | os.PathLike[str] | None = None,
) -> None:
    """Write each report that has a path; JUnit only when the report has a gate section or an error."""
    if json_path:
        write_json(report, json_path)
    if junit_path and "error" in report:
        atomic_write_text(junit_path, junit_error_xml(report))
    elif junit_path and "gate" in report:
        write_junit(report["gate"], junit_path, report=report)
    if markdown_path:
        write_markdown(report, markdown_path)
