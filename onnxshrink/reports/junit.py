"""The gate checks as JUnit XML, one ``<testcase>`` per check, for CI test reporters.

Layout (the attributes GitLab's ``artifacts:reports:junit`` and the GitHub JUnit reporter actions read)::

    <testsuites name="onnxshrink" tests="3" failures="1" errors="0" skipped="1" time="0">
      <testsuite name="onnxshrink.gate" tests="3" failures="1" errors="0" skipped="1" time="0">
        <properties><property name="baseline" value="cnn.onnx"/> ...</properties>
        <testcase name="size_ratio <= 0.5" classname="onnxshrink.gate" time="0">
          <failure message="size_ratio = 0.62 (threshold <= 0.5): 0.62 > 0.5 (needs <= 0.5)" type="fail">...</failure>
          <system-out>value: 0.62 ...</system-out>
        </testcase>
        <testcase name="latency_ratio[cuda] <= 1.0" ...><skipped message="..."/>...</testcase>
      </testsuite>
    </testsuites>

A failed or missing check is a ``<failure>``; a check on an unavailable provider accepted by
``allow_unavailable`` is ``<skipped>``; a passed check has neither.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxshrink.reports._atomic import atomic_write_text
from onnxshrink.validate.gate import format_number

__all__ = ["junit_error_xml", "junit_xml", "write_junit"]

# Characters XML 1.0 cannot hold at all (ElementTree would write them and readers would reject the file).
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: Any) -> str:
    return _INVALID_XML.sub("?", "" if text is None else str(text))


def _where(check: Mapping[str, Any]) -> str:
    provider = check.get("provider")
    return f"{check.get('metric')}[{provider}]" if provider else str(check.get("metric"))


def _details(check: Mapping[str, Any]) -> str:
    lines = [
        f"check: {check.get('expr')}",
        f"metric: {_where(check)}",
        f"value: {format_number(check.get('value'))}",
        f"threshold: {check.get('op')} {format_number(check.get('threshold'))}",
        f"status: {check.get('status')}",
    ]
    if check.get("reason"):
        lines.append(f"reason: {check['reason']}")
    return "\n".join(lines) + "\n"


def _failure_message(check: Mapping[str, Any]) -> str:
    threshold = f"{check.get('op')} {format_number(check.get('threshold'))}"
    if check.get("value") is None:
        message = f"{_where(check)}: no value (threshold {threshold})"
    else:
        message = f"{_where(check)} = {format_number(check.get('value'))} (threshold {threshold})"
    return message + (f": {check['reason']}" if check.get("reason") else "")


def _properties(report: Mapping[str, Any] | None, gate: Mapping[str, Any]) -> list[tuple[str, str]]:
    props: list[tuple[str, str]] = []
    if report:
        tool = report.get("tool") or {}
        if tool.get("version"):
            props.append(("onnxshrink.version", str(tool["version"])))
        for key, name in (("input", "baseline"), ("output", "candidate")):
            path = (report.get(key) or {}).get("path")
            if path:
                props.append((name, str(path)))
        steps = report.get("steps") or []
        if steps:
            props.append(("steps", " -> ".join(str(s.get("plugin")) for s in steps)))
    props.append(("allow_unavailable", str(bool(gate.get("allow_unavailable"))).lower()))
    props.append(("verdict", "passed" if gate.get("passed") else "failed"))
    return props


def junit_xml(
    gate_section: Mapping[str, Any], *, suite_name: str = "onnxshrink.gate", report: Mapping[str, Any] | None = None
) -> str:
    """The JUnit XML text for a report's ``gate`` section."""
    checks = list(gate_section.get("checks") or [])
    failures = sum(1 for c in checks if not c.get("passed"))
    skipped = sum(1 for c in checks if c.get("passed") and c.get("status") == "unavailable")
    counts = {"tests": str(len(checks)), "failures": str(failures), "errors": "0", "skipped": str(skipped), "time": "0"}

    root = ET.Element("testsuites", {"name": "onnxshrink", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": _clean(suite_name), **counts})
    props = ET.SubElement(suite, "properties")
    for name, value in _properties(report, gate_section):
        ET.SubElement(props, "property", {"name": _clean(name), "value": _clean(value)})

    for check in checks:
        case = ET.SubElement(
            suite, "testcase", {"name": _clean(check.get("expr")), "classname": _clean(suite_name), "time": "0"}
        )
        details = _clean(_details(check))
        if not check.get("passed"):
            failure = ET.SubElement(
                case,
                "failure",
                {"message": _clean(_failure_message(check)), "type": _clean(check.get("status") or "fail")},
            )
            failure.text = _clean(check.get("reason") or "")
        elif check.get("status") == "unavailable":
            ET.SubElement(case, "skipped", {"message": _clean(check.get("reason") or "provider unavailable; allowed")})
        out = ET.SubElement(case, "system-out")
        out.text = details

    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(
    gate_section: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    suite_name: str = "onnxshrink.gate",
    report: Mapping[str, Any] | None = None,
) -> Path:
    """Write the gate checks as JUnit XML at ``path`` (atomically). ``report`` adds model paths as properties."""
    return atomic_write_text(path, junit_xml(gate_section, suite_name=suite_name, report=report))


def junit_error_xml(report: Mapping[str, Any], *, suite_name: str = "onnxshrink.gate") -> str:
    """JUnit XML for a run that ended with an error (exit 2 or 3): one ``<testcase>`` with an ``<error>``
    holding the one-line message, so a CI test view shows why there is no verdict."""
    error = report.get("error") or {}
    message = _clean(error.get("message") or "error")
    counts = {"tests": "1", "failures": "0", "errors": "1", "skipped": "0", "time": "0"}
    root = ET.Element("testsuites", {"name": "onnxshrink", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": _clean(suite_name), **counts})
    props = ET.SubElement(suite, "properties")
    for name, value in _properties(report, {"passed": False}):
        ET.SubElement(props, "property", {"name": _clean(name), "value": _clean(value)})
    ET.SubElement(props, "property", {"name": "exit_code", "value": _clean(error.get("exit_code"))})
    case = ET.SubElement(suite, "testcase", {"name": "onnxshrink run", "classname": _clean(suite_name), "time": "0"})
    failure = ET.SubElement(case, "error", {"message": message, "type": f"exit {_clean(error.get('exit_code'))}"})
    failure.text = message
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
