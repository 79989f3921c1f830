"""A Markdown summary of a report, fit for a pull-request comment or a CI job summary.

Sections, each left out when the report has nothing for it: verdict header, models, gate checks,
size, latency per execution provider, fidelity, data, steps. Renders in GitHub and GitLab.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxshrink.reports._atomic import atomic_write_text
from onnxshrink.validate.gate import format_number

__all__ = ["render_markdown", "write_markdown"]

DASH = "—"
_STATUS_ICON = {"pass": "✅", "fail": "❌", "missing": "❌", "unavailable": "⚠️"}
_STATUS_TEXT = {"pass": "pass", "fail": "FAIL", "missing": "FAIL (missing)", "unavailable": "allowed (unavailable)"}


def _cell(text: Any) -> str:
    """Table-safe text: no pipes or line breaks."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _code(text: Any) -> str:
    return f"`{_cell(text).replace('`', chr(39))}`"


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value: Any, digits: int = 4) -> str:
    if not _is_num(value):
        return DASH if value is None else _cell(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value) or math.isinf(value):
        return format_number(value)
    return f"{value:.{digits}g}"


def _bytes(value: Any) -> str:
    if not _is_num(value):
        return _num(value)
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            human = f"{int(size)} B" if unit == "B" else f"{size:.2f} {unit}"
            break
        size /= 1024
    return human if unit == "B" else f"{human} ({int(value):,} B)"


def _ms(value: Any) -> str:
    return DASH if not _is_num(value) else f"{_num(value)} ms"


def _ratio(value: Any) -> str:
    if not _is_num(value) or math.isnan(value) or math.isinf(value):
        return _num(value)
    change = (value - 1.0) * 100.0
    sign = "+" if change > 0 else "−" if change < 0 else "±"
    return f"{value:.4g} ({sign}{abs(change):.1f}%)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _section(report: Mapping[str, Any], *names: str) -> Mapping[str, Any]:
    for name in names:
        value = report.get(name)
        if isinstance(value, Mapping):
            return value
    return {}


# --------------------------------------------------------------------------- sections


def _header(report: Mapping[str, Any]) -> list[str]:
    gate = report.get("gate")
    error = report.get("error")
    if isinstance(error, Mapping):
        lines = [
            f"## ❌ onnxshrink: ERROR (exit {_cell(error.get('exit_code'))})",
            "",
            _cell(error.get("message") or ""),
        ]
    elif isinstance(gate, Mapping):
        checks = gate.get("checks") or []
        passed = sum(1 for c in checks if c.get("passed"))
        if gate.get("passed"):
            title = "## ✅ onnxshrink gate: PASS"
        else:
            title = "## ❌ onnxshrink gate: FAIL"
        allowed = sum(1 for c in checks if c.get("passed") and c.get("status") == "unavailable")
        line = f"{passed} of {len(checks)} checks passed"
        if allowed:
            line += f" ({allowed} on an unavailable provider, allowed by `--allow-unavailable`)"
        lines = [title, "", line + "."]
    else:
        lines = ["## onnxshrink report", "", "_No gate checks were given._"]

    baseline = _section(report, "input", "baseline").get("path")
    candidate = _section(report, "output", "candidate").get("path")
    if baseline or candidate:
        lines += [
            "",
            f"**Baseline** {_code(baseline) if baseline else DASH} → **Candidate** "
            f"{_code(candidate) if candidate else DASH}",
        ]
    return lines


def _gate(report: Mapping[str, Any]) -> list[str]:
    gate = report.get("gate")
    if not isinstance(gate, Mapping):
        return []
    rows = []
    for check in gate.get("checks") or []:
        status = str(check.get("status") or ("pass" if check.get("passed") else "fail"))
        rows.append(
            [
                _STATUS_ICON.get(status, "❔"),
                _code(check.get("expr")),
                _num(check.get("value"), 6),
                _STATUS_TEXT.get(status, _cell(status)),
                _cell(check.get("reason") or ""),
            ]
        )
    lines = ["### Gate", ""]
    if not rows:
        return lines + ["_No checks._"]
    return lines + _table(["", "check", "value", "result", "reason"], rows)


_SIZE_ROWS = (
    ("file bytes", "file_bytes", "size_ratio", _bytes),
    ("parameters", "params", "params_ratio", _num),
    ("non-zeros", "nonzeros", "nonzeros_ratio", _num),
    ("compressed", "compressed_bytes", "compressed_ratio", _bytes),
)


def _size(report: Mapping[str, Any], validation: Mapping[str, Any]) -> list[str]:
    size = validation.get("size") if isinstance(validation.get("size"), Mapping) else {}
    baseline = size.get("baseline") or _section(report, "input", "baseline").get("size") or {}
    candidate = size.get("candidate") or _section(report, "output", "candidate").get("size") or {}
    if not baseline and not candidate:
        return []
    rows = []
    for label, key, ratio_key, fmt in _SIZE_ROWS:
        base, cand = baseline.get(key), candidate.get(key)
        ratio = size.get(ratio_key)
        if ratio is None and _is_num(base) and _is_num(cand) and base:
            ratio = cand / base
        if base is None and cand is None:
            continue
        rows.append([label, fmt(base), fmt(cand), _ratio(ratio)])
    return ["### Size", ""] + _table(["", "baseline", "candidate", "ratio"], rows)


def _latency(validation: Mapping[str, Any]) -> list[str]:
    latency = validation.get("latency")
    if not isinstance(latency, Mapping) or not latency:
        return []
    rows, notes = [], []
    for ep, entry in latency.items():
        entry = entry if isinstance(entry, Mapping) else {}
        status = entry.get("status", "ok")
        if status == "ok":
            base, cand = entry.get("baseline") or {}, entry.get("candidate") or {}
            rows.append(
                [
                    _code(ep),
                    "ok",
                    _ms(base.get("median_ms")),
                    _ms(cand.get("median_ms")),
                    _ms(base.get("p90_ms")),
                    _ms(cand.get("p90_ms")),
                    _ratio(entry.get("ratio")),
                ]
            )
            if entry.get("warning"):
                notes.append(f"- ⚠️ {_code(ep)}: {_cell(entry['warning'])}")
        else:
            why = entry.get("reason") or entry.get("error") or "no reason given"
            rows.append([_code(ep), f"{_cell(status)}: {_cell(why)}", DASH, DASH, DASH, DASH, DASH])
    lines = ["### Latency", ""] + _table(
        ["provider", "status", "baseline median", "candidate median", "baseline p90", "candidate p90", "ratio"], rows
    )
    return lines + ([""] + notes if notes else [])


_FIDELITY_ROWS = (
    ("cosine", "cosine similarity"),
    ("max_abs_error", "max abs error"),
    ("rel_error", "relative error"),
    ("top1_agreement", "top-1 agreement"),
)


def _fidelity(validation: Mapping[str, Any]) -> list[str]:
    fidelity = validation.get("fidelity")
    if not isinstance(fidelity, Mapping):
        return []
    rows = [[label, _num(fidelity.get(key), 6)] for key, label in _FIDELITY_ROWS if key in fidelity]
    accuracy = fidelity.get("accuracy")
    if isinstance(accuracy, Mapping):
        rows.append(
            [
                "accuracy",
                f"{_num(accuracy.get('baseline'))} → {_num(accuracy.get('candidate'))} (drop "
                f"{_num(accuracy.get('drop'))})",
            ]
        )
    else:
        rows.append(["accuracy", "_no labels in the data_"])
    lines = ["### Fidelity", "", "Worst over outputs, candidate vs baseline.", ""] + _table(["metric", "value"], rows)

    outputs = fidelity.get("outputs")
    if isinstance(outputs, Mapping) and len(outputs) > 1:
        per = [
            [_code(name)] + [_num((o or {}).get(key), 6) for key, _ in _FIDELITY_ROWS] for name, o in outputs.items()
        ]
        lines += ["", "<details><summary>Per output</summary>", ""]
        lines += _table(["output"] + [label for _, label in _FIDELITY_ROWS], per)
        lines += ["", "</details>"]
    return lines


def _data(validation: Mapping[str, Any]) -> list[str]:
    data = validation.get("data")
    if not isinstance(data, Mapping):
        return []
    source = data.get("source")
    what = f"{_code(source)}" if source else "synthetic inputs"
    line = f"**Data:** {what}, {_num(data.get('samples'))} samples"
    if data.get("synthetic"):
        line += " (generated from the input shapes: fidelity on random inputs says little)"
    lines = [line]
    lines += [f"- ⚠️ {_cell(w)}" for w in data.get("warnings") or []]
    return lines


def _options(options: Any) -> str:
    if not isinstance(options, Mapping) or not options:
        return DASH
    return _code(", ".join(f"{k}={v}" for k, v in options.items()))


def _steps(report: Mapping[str, Any]) -> list[str]:
    steps = report.get("steps")
    if not steps:
        return []
    rows = [
        [str(i + 1), _code(s.get("plugin")), _options(s.get("options")), _num(s.get("seconds"), 3)]
        for i, s in enumerate(steps)
    ]
    return ["### Steps", ""] + _table(["#", "plugin", "options", "seconds"], rows)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown; any section may be missing (no validation, no latency, no gate)."""
    validation = report.get("validation") if isinstance(report.get("validation"), Mapping) else {}
    blocks = [_header(report), _gate(report), _size(report, validation)]
    if validation:
        blocks += [_latency(validation), _fidelity(validation), _data(validation)]
    else:
        blocks.append(["_Validation was skipped: no latency or fidelity measured._"])
    blocks.append(_steps(report))
    tool = _section(report, "tool")
    if tool.get("version"):
        blocks.append(
            [
                f"<sub>{_cell(tool.get('name') or 'onnxshrink')} {_cell(tool['version'])} · "
                f"{_cell(report.get('schema') or '')}</sub>"
            ]
        )
    return "\n\n".join("\n".join(b) for b in blocks if b) + "\n"


def write_markdown(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``render_markdown(report)`` at ``path`` (atomically)."""
    return atomic_write_text(path, render_markdown(report))
