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

import base64
import hashlib
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..gate import format_number
from . import json_safe
from ._atomic import atomic_write_text

__all__ = ["read_report", "report_kind", "render_html", "write_html"]

TUNE_SCHEMA = "onnxshrink.tune/1"
TOP_LAYERS = 25  # layers drawn in the per-layer chart (the table lists every row)
HISTOGRAM_BINS = 20
_ERROR_HOOK = """window.__reportErrors = [];
(function () {
  function record(text) {
    window.__reportErrors.push(String(text));
    var el = document.getElementById("render-status");
    if (el && el.textContent) {
      var s = JSON.parse(el.textContent); s.errors = window.__reportErrors; el.textContent = JSON.stringify(s);
      document.body.setAttribute("data-render", "failed");
    }
  }
  window.addEventListener("error", function (e) { record("error: " + (e.message || e.type) + (e.filename ? " at " + e.filename + ":" + e.lineno : "")); });
  window.addEventListener("unhandledrejection", function (e) { record("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) { record("blocked by the page's policy: " + e.violatedDirective + " " + e.blockedURI); });
  var original = console.error;
  console.error = function () { record("console.error: " + Array.prototype.join.call(arguments, " ")); return original.apply(console, arguments); };
})();"""


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
    raise UsageError(f"not an onnxshrink report (schema {schema!r}): expected onnxshrink.report/1 from shrink, gate or bench, or {TUNE_SCHEMA}")


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML page (str). See the module docstring for what it shows."""
    report = json_safe(report)
    kind = report_kind(report)
    page = _Page()
    if kind == "tune":
        _tune(page, report)
    else:
        _single(page, report, kind)
    return page.html(_title(report, kind))


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
        raise UsageError(f"report {str(path)!r} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(report, dict):
        raise UsageError(f"report {str(path)!r} is not an onnxshrink report: expected a JSON object, got {type(report).__name__}")
    try:
        report_kind(report)
    except UsageError as exc:
        raise UsageError(f"report {str(path)!r} is {exc.message}") from None
    return report


def write_html(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render ``report`` and write it to ``path`` atomically."""
    return atomic_write_text(path, render_html(report))


# --------------------------------------------------------------------------- page assembly


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def _csp_hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"


class _Page:
    """Sections of HTML (already escaped) and the chart specs the page script draws."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.charts: list[dict[str, Any]] = []

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def chart(self, spec: dict[str, Any], title: str, height: int) -> str:
        spec = {**spec, "id": f"chart-{len(self.charts) + 1}"}
        self.charts.append(spec)
        return f'<div class="chart"><h3>{_e(title)}</h3><div style="height:{int(height)}px"><canvas id="{spec["id"]}" role="img" aria-label="{_e(title)}"></canvas></div></div>'

    def html(self, title: str) -> str:
        library = _asset("chart.umd.min.js")
        library = "\n".join(line for line in library.splitlines() if not line.startswith("//# sourceMappingURL="))
        page_script = _asset("report.js")
        scripts = [_ERROR_HOOK, library, page_script]
        csp = f"default-src 'none'; script-src {' '.join(_csp_hash(s) for s in scripts)}; style-src 'unsafe-inline'; img-src data:"
        return "\n".join([
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{_asset('report.css')}</style>",
            f"<script>{_ERROR_HOOK}</script>",
            "</head><body><main>",
            *self.parts,
            '<pre id="render-status"></pre>',
            "</main>",
            f'<script type="application/json" id="report-data">{_script_json({"charts": self.charts})}</script>',
            f"<script>{library}</script>",
            f"<script>{page_script}</script>",
            "</body></html>",
            "",
        ])


def _title(report: Mapping[str, Any], kind: str) -> str:
    name = _model_paths(report)[0] or ""
    return f"onnxshrink {kind}: {Path(name).name}" if name else f"onnxshrink {kind}"


# --------------------------------------------------------------------------- formatting


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bytes(value: Any) -> str:
    if not _is_num(value):
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return "—"  # pragma: no cover


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return format_number(value) if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def _ratio(value: Any) -> str:
    if not _is_num(value):
        return "—"
    change = (value - 1.0) * 100.0
    sign = "+" if change > 0 else "−" if change < 0 else "±"
    return f"{value:.3f}× ({sign}{abs(change):.1f}%)"


def _cell(text: str, sort: Any = None, cls: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    if sort is not None or cls == "num":
        attrs += f' data-v="{_e(sort) if _is_num(sort) else ""}"'
    return f"<td{attrs}>{text}</td>"


def _table(header: Sequence[str], rows: Sequence[str], *, sortable: bool = False, numeric: Sequence[int] = (), scroll: bool = False) -> str:
    head = "".join(f'<th{" class=num" if i in numeric else ""} scope="col">{_e(h)}</th>' for i, h in enumerate(header))
    table = f'<table{" class=sortable" if sortable else ""}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return f'<div class="scroll">{table}</div>' if scroll else table


def _badge(status: str, text: str | None = None) -> str:
    return f'<span class="badge {_e(status)}">{_e(text or status)}</span>'


def _section(title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section class="card"><h2>{_e(title)}</h2>{note_html}{body}</section>'


def _tile(label: str, value: str, sub: str = "") -> str:
    return f'<div class="tile"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div><div class="sub">{_e(sub)}</div></div>'


def _model_paths(report: Mapping[str, Any]) -> tuple[str | None, str | None]:
    if "model" in report and isinstance(report["model"], Mapping):
        return report["model"].get("path"), None
    if "model" in report:
        return report.get("model"), None
    baseline = (report.get("input") or {}).get("path") if isinstance(report.get("input"), Mapping) else report.get("baseline")
    candidate = (report.get("output") or {}).get("path") if isinstance(report.get("output"), Mapping) else report.get("candidate")
    return baseline, candidate


def _histogram(series: Mapping[str, Sequence[float]], bins: int = HISTOGRAM_BINS, digits: int = 4) -> tuple[list[str], dict[str, list[int]]]:
    """Shared bins over every series: labels (bin ranges) and counts per series."""
    values = [v for vs in series.values() for v in vs if _is_num(v)]
    lo, hi = min(values), max(values)
    if hi <= lo:
        return [f"{lo:.{digits}g}"], {name: [sum(1 for v in vs if _is_num(v))] for name, vs in series.items()}
    width = (hi - lo) / bins
    labels = [f"{lo + i * width:.{digits}g}–{lo + (i + 1) * width:.{digits}g}" for i in range(bins)]
    counts = {}
    for name, vs in series.items():
        row = [0] * bins
        for v in vs:
            if _is_num(v):
                row[min(bins - 1, int((v - lo) / width))] += 1
        counts[name] = row
    return labels, counts


# --------------------------------------------------------------------------- shrink / gate / bench


def _single(page: _Page, report: Mapping[str, Any], kind: str) -> None:
    baseline, candidate = _model_paths(report)
    paths = f"<code>{_e(baseline)}</code>" + (f" → <code>{_e(candidate)}</code>" if candidate else "")
    page.add(f'<header class="top"><h1>onnxshrink {_e(kind)} report</h1><div class="paths">{paths}</div></header>')
    _verdict(page, report, kind)
    _tiles(page, report, kind)
    _bytes_section(page, report)
    latency = (report.get("validation") or {}).get("latency") if kind != "bench" else report.get("latency")
    if isinstance(latency, Mapping) and latency:
        _latency_section(page, latency, single=kind == "bench")
    fidelity = (report.get("validation") or {}).get("fidelity")
    if isinstance(fidelity, Mapping):
        _fidelity_section(page, fidelity)
    _steps_section(page, report)
    _data_section(page, report)
    _footer(page, report)


def _verdict(page: _Page, report: Mapping[str, Any], kind: str) -> None:
    gate = report.get("gate")
    if not isinstance(gate, Mapping) and kind in ("bench", "compare"):
        return  # measurements only: there is nothing to judge
    if not isinstance(gate, Mapping):
        page.add('<div class="verdict none"><span class="big">NO GATE</span><span>No --gate checks were given: numbers only, no verdict.</span></div>')
        return
    checks = gate.get("checks") or []
    passed = sum(1 for c in checks if c.get("passed"))
    verdict = "pass" if gate.get("passed") else "fail"
    page.add(f'<div class="verdict {verdict}"><span class="big">GATE {"PASSED" if verdict == "pass" else "FAILED"}</span><span>{passed} of {len(checks)} checks passed</span></div>')
    rows = []
    for check in checks:
        status = str(check.get("status") or ("pass" if check.get("passed") else "fail"))
        rows.append("<tr>" + "".join([
            _cell(f"<code>{_e(check.get('expr'))}</code>"),
            _cell(_e(_num(check.get("value"), 6)), check.get("value"), "num"),
            _cell(_badge(status)),
            _cell(_e(check.get("reason"))),
        ]) + "</tr>")
    page.add(_section("Gate checks", _table(["check", "value", "status", "reason"], rows, numeric=(1,))))


def _tiles(page: _Page, report: Mapping[str, Any], kind: str) -> None:
    validation = report.get("validation") or {}
    size = validation.get("size") or {}
    tiles = []
    before = (report.get("input") or {}).get("size") if isinstance(report.get("input"), Mapping) else size.get("baseline")
    after = (report.get("output") or {}).get("size") if isinstance(report.get("output"), Mapping) else size.get("candidate")
    if kind == "bench":
        single = report.get("size") or {}
        tiles.append(_tile("file size", _bytes(single.get("file_bytes")), f"{_num(single.get('params'))} parameters"))
    elif isinstance(before, Mapping) and isinstance(after, Mapping):
        ratio = after.get("file_bytes") / before["file_bytes"] if _is_num(after.get("file_bytes")) and before.get("file_bytes") else None
        tiles.append(_tile("file size", f"{_bytes(before.get('file_bytes'))} → {_bytes(after.get('file_bytes'))}", f"ratio {_ratio(ratio)}"))
        if _is_num(before.get("compressed_bytes")) and _is_num(after.get("compressed_bytes")) and before["compressed_bytes"]:
            tiles.append(_tile("compressed (zlib)", f"{_bytes(before['compressed_bytes'])} → {_bytes(after['compressed_bytes'])}", f"ratio {_ratio(after['compressed_bytes'] / before['compressed_bytes'])}"))
    for ep, entry in (validation.get("latency") or {}).items():
        if isinstance(entry, Mapping) and entry.get("status") == "ok":
            ci = entry.get("ratio_ci")
            sub = f"interval {_num(ci[0])}–{_num(ci[1])}" if isinstance(ci, list) and len(ci) == 2 else f"{_num((entry.get('candidate') or {}).get('median_ms'))} ms median"
            tiles.append(_tile(f"latency {ep}", _ratio(entry.get("ratio")), sub))
    fidelity = validation.get("fidelity") or {}
    if _is_num(fidelity.get("cosine")):
        tiles.append(_tile("worst cosine", f"{fidelity['cosine']:.6f}", "over outputs" + (" and feeds" if _any_per_feed(fidelity) else "")))
    accuracy = fidelity.get("accuracy")
    if isinstance(accuracy, Mapping) and _is_num(accuracy.get("drop")):
        tiles.append(_tile("accuracy drop", f"{100 * accuracy['drop']:.2f} pt", f"{_num(accuracy.get('baseline'))} → {_num(accuracy.get('candidate'))}"))
    if tiles:
        page.add(f'<div class="tiles">{"".join(tiles)}</div>')


def _any_per_feed(fidelity: Mapping[str, Any]) -> bool:
    return any(isinstance(o, Mapping) and o.get("cosine_per_feed") for o in (fidelity.get("outputs") or {}).values())


def _sensitivity(report: Mapping[str, Any]) -> dict[str, float]:
    """Name (tensor or layer) → sensitivity (1 − output cosine with only it changed), from the steps' stats."""
    found: dict[str, float] = {}

    def visit(value: Any) -> None:
        if isinstance(value, Mapping):
            for v in value.values():
                visit(v)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Mapping):
                    name = item.get("tensor", item.get("layer"))
                    score = item.get("sensitivity")
                    if not _is_num(score) and _is_num(item.get("cosine_alone")):
                        score = 1.0 - item["cosine_alone"]
                    if isinstance(name, str) and _is_num(score):
                        found.setdefault(name, float(score))
                visit(item)

    for step in report.get("steps") or []:
        if isinstance(step, Mapping):
            visit(step.get("stats"))
    return found


def _bytes_section(page: _Page, report: Mapping[str, Any]) -> None:
    tensors = report.get("tensors")
    if not isinstance(tensors, Mapping) or not tensors.get("rows"):
        _whole_model_bytes(page, report)
        return
    rows = tensors["rows"]
    has_after = any("after" in r for r in rows)
    by_op = tensors.get("by_op_type") or {}
    ops = list(by_op)
    first = "before" if has_after else "stored"
    series = [{"label": first, "role": "before", "values": [by_op[o].get("before", 0) for o in ops]}]
    if has_after:
        series.append({"label": "after", "role": "after", "values": [by_op[o].get("after", 0) for o in ops]})
    charts = [page.chart({"kind": "bar", "horizontal": True, "unit": "bytes", "labels": ops, "series": series}, "stored bytes per op type", 60 + 34 * len(ops) * (1 + has_after) // 2 + 40)]
    layers: dict[str, list[int]] = {}
    for r in rows:  # a layer's inputs (weight, bias, scales) summed
        totals = layers.setdefault(r["layer"], [0, 0])
        totals[0] += (r.get("before") or {}).get("bytes", 0)
        totals[1] += (r.get("after") or {}).get("bytes", 0)
    top = sorted(layers.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:TOP_LAYERS]
    layer_series = [{"label": first, "role": "before", "values": [t[0] for _, t in top]}]
    if has_after:
        layer_series.append({"label": "after", "role": "after", "values": [t[1] for _, t in top]})
    title = f"stored bytes per layer (largest {len(top)} of {len(layers)})" if len(layers) > len(top) else "stored bytes per layer"
    charts.append(page.chart({"kind": "bar", "horizontal": True, "unit": "bytes", "labels": [name for name, _ in top], "series": layer_series}, title, 60 + 22 * len(top) * (1 + has_after) // 2 + 40))
    sensitivity = _sensitivity(report)
    header = ["layer", "op", "tensor", "shape", "stored before", "bytes before"]
    numeric = [5]
    if has_after:
        header += ["stored after", "bytes after", "ratio"]
        numeric += [7, 8]
    if sensitivity:
        header.append("sensitivity")
        numeric.append(len(header) - 1)
    body = []
    for r in rows:
        b, a = r.get("before") or {}, r.get("after") or {}
        shape = "×".join(str(d) for d in r.get("shape") or []) + (f" → {'×'.join(str(d) for d in a['shape'])}" if a.get("shape") else "")
        cells = [
            _cell(_e(r.get("layer")), cls="mono"),
            _cell(_e(r.get("op_type"))),
            _cell(_e(r.get("tensor")) + (' <span class="muted">and every other input (op replaced)</span>' if r.get("slot") is None else ""), cls="mono"),
            _cell(_e(shape)),
            _cell(_e(b.get("form", "—"))),
            _cell(_e(_bytes(b.get("bytes"))), b.get("bytes"), "num"),
        ]
        if has_after:
            ratio = a.get("bytes", 0) / b["bytes"] if b.get("bytes") else None
            cells += [
                _cell(_e(a.get("form", "removed" if b else "—"))),
                _cell(_e(_bytes(a.get("bytes", 0))), a.get("bytes", 0), "num"),
                _cell(_e(f"{ratio:.3f}" if ratio is not None else "—"), ratio, "num"),
            ]
        if sensitivity:
            score = sensitivity.get(r.get("tensor"), sensitivity.get(r.get("layer")))
            cells.append(_cell(_e(f"{score:.3g}" if score is not None else "—"), score, "num"))
        body.append("<tr>" + "".join(cells) + "</tr>")
    other = tensors.get("other") or {}
    notes = ["Every stored tensor is counted once, at the layer input it feeds (through any decoder onnxruntime folds at load). Click a column to sort."]
    if other.get("rows"):
        notes.append(f"{other['rows']} smaller layer inputs are not listed ({_bytes(other.get('before'))} before, {_bytes(other.get('after'))} after).")
    unattributed = tensors.get("unattributed") or {}
    if unattributed.get("before") or unattributed.get("after"):
        notes.append(f"Stored tensors no layer reads: {_bytes(unattributed.get('before'))} before, {_bytes(unattributed.get('after'))} after.")
    table = _table(header, body, sortable=True, numeric=numeric, scroll=True)
    page.add(_section("Where the bytes are", f'<div class="grid2">{"".join(charts)}</div><h3>Per tensor</h3>{table}', _e(" ".join(notes))))


def _whole_model_bytes(page: _Page, report: Mapping[str, Any]) -> None:
    size = (report.get("validation") or {}).get("size") or {}
    before = (report.get("input") or {}).get("size") if isinstance(report.get("input"), Mapping) else size.get("baseline")
    after = (report.get("output") or {}).get("size") if isinstance(report.get("output"), Mapping) else size.get("candidate")
    if not isinstance(before, Mapping):
        before = report.get("size") if isinstance(report.get("size"), Mapping) and "file_bytes" in report.get("size", {}) else None
    if not isinstance(before, Mapping):
        return
    keys = [k for k in ("file_bytes", "compressed_bytes") if _is_num(before.get(k))]
    series = [{"label": "baseline" if after else "model", "role": "before", "values": [before[k] for k in keys]}]
    if isinstance(after, Mapping):
        series.append({"label": "candidate", "role": "after", "values": [after.get(k) if _is_num(after.get(k)) else 0 for k in keys]})
    chart = page.chart({"kind": "bar", "horizontal": True, "unit": "bytes", "labels": [k.replace("_", " ") for k in keys], "series": series}, "model size", 200)
    rows = []
    for key in ("file_bytes", "compressed_bytes", "params", "nonzeros"):
        if key in before:
            fmt = _bytes if key.endswith("bytes") else _num
            cells = [_cell(_e(key)), _cell(_e(fmt(before.get(key))), before.get(key), "num")]
            if isinstance(after, Mapping):
                cells.append(_cell(_e(fmt(after.get(key))), after.get(key), "num"))
            rows.append("<tr>" + "".join(cells) + "</tr>")
    header = ["", "baseline", "candidate"] if isinstance(after, Mapping) else ["", "model"]
    page.add(_section("Size", f'<div class="grid2">{chart}<div>{_table(header, rows, numeric=(1, 2))}</div></div>', "This report has whole-model sizes only (no per-tensor breakdown)."))


def _latency_section(page: _Page, latency: Mapping[str, Any], *, single: bool) -> None:
    blocks, rows = [], []
    for ep, entry in latency.items():
        if not isinstance(entry, Mapping):
            continue
        status = str(entry.get("status", "ok"))
        if status != "ok":
            rows.append("<tr>" + _cell(_e(ep)) + _cell(_badge(status)) + f'<td colspan="5">{_e(entry.get("reason") or entry.get("error") or "")}</td></tr>')
            continue
        sides = {"model": entry} if single else {"baseline": entry.get("baseline") or {}, "candidate": entry.get("candidate") or {}}
        times = {name: side.get("times_ms") for name, side in sides.items()}
        if all(isinstance(t, list) and t for t in times.values()):
            labels, counts = _histogram(times)
            series = [{"label": name, "role": "before" if name != "candidate" else "after", "values": counts[name]} for name in sides]
            blocks.append(page.chart({"kind": "bar", "unit": "", "labels": labels, "series": series, "value_title": "runs", "category_title": "milliseconds per run"}, f"{ep}: per-run latency, interleaved runs", 260))
        else:
            labels = ["median", "p90", "min"]
            series = [{"label": name, "role": "before" if name != "candidate" else "after", "values": [side.get(k + "_ms") if _is_num(side.get(k + "_ms")) else 0 for k in ("median", "p90", "min")]} for name, side in sides.items()]
            blocks.append(page.chart({"kind": "bar", "unit": "ms", "labels": labels, "series": series}, f"{ep}: latency (no per-run times in this report)", 220))
        for name, side in sides.items():
            ci = entry.get("ratio_ci")
            ratio = "" if single or name == "baseline" else _ratio(entry.get("ratio")) + (f" [{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "")
            rows.append("<tr>" + "".join([
                _cell(_e(ep)), _cell(_e(name)),
                _cell(_e(_num(side.get("median_ms"))), side.get("median_ms"), "num"),
                _cell(_e(_num(side.get("p90_ms"))), side.get("p90_ms"), "num"),
                _cell(_e(_num(side.get("runs"))), side.get("runs"), "num"),
                _cell(_e(ratio)),
                _cell(f'<span class="warn">{_e(entry.get("warning"))}</span>' if entry.get("warning") and name != "baseline" else ""),
            ]) + "</tr>")
    table = _table(["provider", "model", "median ms", "p90 ms", "runs", "ratio [interval]", "note"], rows, numeric=(2, 3, 4))
    note = "Baseline and candidate timed interleaved (A B A B …) after warm-up, fixed thread count. The ratio is candidate / baseline median; its interval, where given, is what a gate should trust on a noisy machine."
    page.add(_section("Latency per provider", (f'<div class="grid2">{"".join(blocks)}</div>' if blocks else "") + table, _e(note)))


def _fidelity_section(page: _Page, fidelity: Mapping[str, Any]) -> None:
    if fidelity.get("status") == "failed":
        page.add(_section("Fidelity", f'<p>{_badge("failed")} {_e(fidelity.get("error"))}</p>'))
        return
    outputs = fidelity.get("outputs") or {}
    rows, charts = [], []
    for name, out in outputs.items():
        if not isinstance(out, Mapping):
            continue
        per_feed = [v for v in out.get("cosine_per_feed") or [] if _is_num(v)]
        worst = out.get("cosine_worst", out.get("cosine"))
        mean = out.get("cosine_mean", sum(per_feed) / len(per_feed) if per_feed else out.get("cosine"))
        rows.append("<tr>" + "".join([
            _cell(_e(name), cls="mono"),
            _cell(_e(_num(worst, 7)), worst, "num"),
            _cell(_e(_num(mean, 7)), mean, "num"),
            _cell(_e(_num(out.get("max_abs_error"))), out.get("max_abs_error"), "num"),
            _cell(_e(_num(out.get("rel_error"))), out.get("rel_error"), "num"),
            _cell(_e(_num(out.get("top1_agreement"))), out.get("top1_agreement"), "num"),
            _cell(_e(len(per_feed) if per_feed else "—"), len(per_feed), "num"),
        ]) + "</tr>")
        if per_feed:
            labels, counts = _histogram({"feeds": per_feed}, bins=min(HISTOGRAM_BINS, max(5, len(per_feed))), digits=6)
            charts.append(page.chart({"kind": "bar", "unit": "", "labels": labels, "series": [{"label": "feeds", "role": "after", "values": counts["feeds"]}], "value_title": "feeds", "category_title": "cosine"}, f"{name}: cosine per feed", 220))
    body = (f'<div class="grid2">{"".join(charts)}</div>' if charts else "") + _table(["output", "worst cosine", "mean cosine", "max abs error", "rel error", "top-1 agreement", "feeds"], rows, sortable=True, numeric=(1, 2, 3, 4, 5, 6))
    accuracy = fidelity.get("accuracy")
    if isinstance(accuracy, Mapping):
        body += f'<p>Accuracy on labels ({_e(accuracy.get("output"))}): {_e(_num(accuracy.get("baseline")))} → {_e(_num(accuracy.get("candidate")))}, drop {_e(_num(accuracy.get("drop")))}.</p>'
    warnings = list(fidelity.get("warnings") or [])
    if warnings:
        body += "".join(f'<p class="warn">{_e(w)}</p>' for w in warnings)
    page.add(_section("Fidelity per output", body, "Candidate against baseline on the evaluation feeds. The worst feed tells a release more than the mean."))


def _steps_section(page: _Page, report: Mapping[str, Any]) -> None:
    steps = [s for s in report.get("steps") or [] if isinstance(s, Mapping)]
    if not steps:
        return
    rows = []
    for step in steps:
        options = ", ".join(f"{k}={v}" for k, v in (step.get("options") or {}).items())
        warnings = "".join(f'<div class="warn">{_e(w)}</div>' for w in step.get("warnings") or [])
        rows.append("<tr>" + "".join([
            _cell(f"<b>{_e(step.get('plugin'))}</b>"),
            _cell(f'<span class="mono">{_e(options)}</span>'),
            _cell(_e(_num(step.get("seconds"), 3)), step.get("seconds"), "num"),
            _cell(warnings or '<span class="muted">—</span>'),
        ]) + "</tr>")
    page.add(_section("Steps", _table(["plugin", "options", "seconds", "warnings"], rows, numeric=(2,))))


def _data_section(page: _Page, report: Mapping[str, Any]) -> None:
    data = (report.get("validation") or {}).get("data") or report.get("data")
    if not isinstance(data, Mapping):
        return
    source = data.get("source") or "synthetic inputs"
    text = f"<p><code>{_e(source)}</code>: {_e(_num(data.get('samples')))} samples in {_e(_num(data.get('feeds')))} feeds"
    text += f" ({_e(data.get('role'))})</p>" if data.get("role") else "</p>"
    text += "".join(f'<p class="warn">{_e(w)}</p>' for w in data.get("warnings") or [])
    page.add(_section("Data", text))


def _footer(page: _Page, report: Mapping[str, Any]) -> None:
    tool = report.get("tool") if isinstance(report.get("tool"), Mapping) else {}
    parts = [f"{k} {v}" for k, v in tool.items() if k != "name"]
    seed = f" · seed {report['seed']}" if "seed" in report else ""
    page.add(f"<footer>onnxshrink report ({_e(report.get('schema'))}) · {_e(' · '.join(parts))}{_e(seed)} · charts: Chart.js (MIT), inlined</footer>")


# --------------------------------------------------------------------------- tune


def _chain_text(chain: Any) -> str:
    if not isinstance(chain, list):
        return ""
    steps = []
    for step in chain:
        if isinstance(step, Mapping):
            options = ",".join(f"{k}={v}" for k, v in (step.get("options") or {}).items())
            steps.append(f"{step.get('plugin')}" + (f":{options}" if options else ""))
    return " → ".join(steps)


def _tune(page: _Page, report: Mapping[str, Any]) -> None:
    model = report.get("model") if isinstance(report.get("model"), Mapping) else {}
    trials = [t for t in report.get("trials") or [] if isinstance(t, Mapping)]
    pareto = set(report.get("pareto") or [])
    chosen = report.get("chosen")
    page.add(f'<header class="top"><h1>onnxshrink tune report</h1><div class="paths"><code>{_e(model.get("path"))}</code> · {_e(_bytes(model.get("file_bytes")))}</div></header>')
    by_number = {t.get("number"): t for t in trials}
    best = by_number.get(chosen)
    if best is not None:
        metrics = best.get("metrics") or {}
        page.add(f'<div class="verdict pass"><span class="big">CHOSEN: TRIAL {_e(chosen)}</span><span>{_e(_chain_text(best.get("chain")))} · size ratio {_e(_num(metrics.get("size_ratio")))} · cosine {_e(_num(metrics.get("cosine"), 6))}</span></div>')
    else:
        page.add('<div class="verdict fail"><span class="big">NO TRIAL CHOSEN</span><span>No trial passed every gate.</span></div>')
    ok = [t for t in trials if t.get("status") == "ok"]
    tiles = [
        _tile("trials", str(len(trials)), f"{len(ok)} ok, {sum(1 for t in trials if t.get('passed'))} passed the gates"),
        _tile("objective", str(report.get("objective") or "—"), "gates: " + "; ".join(str(g) for g in report.get("gates") or []) or "none"),
        _tile("Pareto front", str(len(pareto)), "trials no other beats on both axes"),
        _tile("search time", f"{_num(report.get('seconds'), 3)} s"),
    ]
    page.add(f'<div class="tiles">{"".join(tiles)}</div>')
    points = []
    use_latency = any(isinstance((t.get("metrics") or {}).get("latency_ratio"), Mapping) for t in ok)
    for t in ok:
        metrics = t.get("metrics") or {}
        latency = metrics.get("latency_ratio") if isinstance(metrics.get("latency_ratio"), Mapping) else {}
        y = latency.get("cpu", next(iter(latency.values()), None)) if use_latency else metrics.get("cosine")
        if not (_is_num(metrics.get("size_ratio")) and _is_num(y)):
            continue
        points.append({"x": metrics["size_ratio"], "y": y, "trial": t.get("number"), "cosine": metrics.get("cosine") if _is_num(metrics.get("cosine")) else None, "pareto": t.get("number") in pareto, "chosen": t.get("number") == chosen, "chain": _chain_text(t.get("chain"))})
    body = ""
    if points:
        y_title = "latency ratio (cpu)" if use_latency else "cosine"
        body = page.chart({"kind": "pareto", "points": points, "x_title": "size ratio", "y_title": y_title}, f"size ratio against {y_title}, coloured by cosine (red low, teal high)", 380)
    rows = []
    for t in trials:
        metrics = t.get("metrics") or {}
        latency = metrics.get("latency_ratio") if isinstance(metrics.get("latency_ratio"), Mapping) else {}
        lat = latency.get("cpu", next(iter(latency.values()), None)) if latency else None
        number = t.get("number")
        flags = ("chosen" if number == chosen else "") + (" Pareto" if number in pareto else "")
        status = str(t.get("status"))
        rows.append(f'<tr{" class=chosen" if number == chosen else ""}>' + "".join([
            _cell(_e(number), number, "num"),
            _cell(_e(_chain_text(t.get("chain"))), cls="mono"),
            _cell(_badge(status) + (f' <span class="warn">{_e(t.get("error"))}</span>' if t.get("error") else "")),
            _cell(_badge("pass" if t.get("passed") else "fail", "yes" if t.get("passed") else "no")),
            _cell(_e(_num(metrics.get("size_ratio"))), metrics.get("size_ratio"), "num"),
            _cell(_e(_bytes(metrics.get("file_bytes"))), metrics.get("file_bytes"), "num"),
            _cell(_e(_num(metrics.get("cosine"), 7)), metrics.get("cosine"), "num"),
            _cell(_e(_num(lat)), lat, "num"),
            _cell(_e(_num(t.get("seconds"), 3)), t.get("seconds"), "num"),
            _cell(_e(flags.strip())),
        ]) + "</tr>")
    body += "<h3>Every trial</h3>" + _table(["#", "chain", "status", "passed", "size ratio", "file", "cosine", "latency ratio", "seconds", ""], rows, sortable=True, numeric=(0, 4, 5, 6, 7, 8), scroll=True)
    page.add(_section("Search: the Pareto front", body, "Each point is a trial that ran; the front holds the trials no other beats on both size and latency. Click a column to sort."))
    page.add(f"<footer>onnxshrink report ({_e(report.get('schema'))}) · charts: Chart.js (MIT), inlined</footer>")
