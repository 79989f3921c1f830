"""Building blocks of the HTML report: the page (inlined assets, chart specs, Content-Security-Policy)
and escaped HTML fragments (tables, tiles, badges, sections). Every text goes through :func:`esc`."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from onnxshrink.validate.gate import format_number

HISTOGRAM_BINS = 20

ERROR_HOOK = """window.__reportErrors = [];
(function () {
  function record(text) {
    window.__reportErrors.push(String(text));
    var el = document.getElementById("render-status");
    if (el && el.textContent) {
      var s = JSON.parse(el.textContent); s.errors = window.__reportErrors; el.textContent = JSON.stringify(s);
      document.body.setAttribute("data-render", "failed");
    }
  }
  window.addEventListener("error", function (e) {
    record("error: " + (e.message || e.type) + (e.filename ? " at " + e.filename + ":" + e.lineno : ""));
  });
  window.addEventListener("unhandledrejection", function (e) { record("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) {
    record("blocked by the page's policy: " + e.violatedDirective + " " + e.blockedURI);
  });
  var original = console.error;
  console.error = function () {
    record("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();"""


# --------------------------------------------------------------------------- page assembly


def asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def script_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escaped in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def csp_hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"


class Page:
    """Sections of HTML (already escaped) and the chart specs the page script draws."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.charts: list[dict[str, Any]] = []

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def chart(self, spec: dict[str, Any], title: str, height: int) -> str:
        spec = {**spec, "id": f"chart-{len(self.charts) + 1}"}
        self.charts.append(spec)
        return (
            f'<div class="chart"><h3>{esc(title)}</h3><div style="height:{int(height)}px"><canvas '
            f'id="{spec["id"]}" role="img" aria-label="{esc(title)}"></canvas></div></div>'
        )

    def html(self, title: str) -> str:
        library = asset("chart.umd.min.js")
        library = "\n".join(line for line in library.splitlines() if not line.startswith("//# sourceMappingURL="))
        page_script = asset("report.js")
        scripts = [ERROR_HOOK, library, page_script]
        csp = (
            f"default-src 'none'; script-src {' '.join(csp_hash(s) for s in scripts)}; style-src 'unsafe-inline'; "
            "img-src data:"
        )
        return "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                f"<title>{esc(title)}</title>",
                f"<style>{asset('report.css')}</style>",
                f"<script>{ERROR_HOOK}</script>",
                "</head><body><main>",
                *self.parts,
                '<pre id="render-status"></pre>',
                "</main>",
                f'<script type="application/json" id="report-data">{script_json({"charts": self.charts})}</script>',
                f"<script>{library}</script>",
                f"<script>{page_script}</script>",
                "</body></html>",
                "",
            ]
        )


def page_title(report: Mapping[str, Any], kind: str) -> str:
    name = model_paths(report)[0] or ""
    return f"onnxshrink {kind}: {Path(name).name}" if name else f"onnxshrink {kind}"


# --------------------------------------------------------------------------- formatting


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def human_bytes(value: Any) -> str:
    if not is_num(value):
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return "—"  # pragma: no cover


def num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return format_number(value) if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def ratio_text(value: Any) -> str:
    if not is_num(value):
        return "—"
    change = (value - 1.0) * 100.0
    sign = "+" if change > 0 else "−" if change < 0 else "±"
    return f"{value:.3f}× ({sign}{abs(change):.1f}%)"


def cell(text: str, sort: Any = None, cls: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    if sort is not None or cls == "num":
        attrs += f' data-v="{esc(sort) if is_num(sort) else ""}"'
    return f"<td{attrs}>{text}</td>"


def html_table(
    header: Sequence[str],
    rows: Sequence[str],
    *,
    sortable: bool = False,
    numeric: Sequence[int] = (),
    scroll: bool = False,
) -> str:
    head = "".join(f'<th{" class=num" if i in numeric else ""} scope="col">{esc(h)}</th>' for i, h in enumerate(header))
    attributes = " class=sortable" if sortable else ""
    table = f"<table{attributes}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="scroll">{table}</div>' if scroll else table


def badge(status: str, text: str | None = None) -> str:
    return f'<span class="badge {esc(status)}">{esc(text or status)}</span>'


def section(title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section class="card"><h2>{esc(title)}</h2>{note_html}{body}</section>'


def tile(label: str, value: str, sub: str = "") -> str:
    return (
        f'<div class="tile"><div class="label">{esc(label)}</div><div class="value">{esc(value)}</div><div '
        f'class="sub">{esc(sub)}</div></div>'
    )


def model_paths(report: Mapping[str, Any]) -> tuple[str | None, str | None]:
    if "model" in report and isinstance(report["model"], Mapping):
        return report["model"].get("path"), None
    if "model" in report:
        return report.get("model"), None
    baseline = (
        (report.get("input") or {}).get("path") if isinstance(report.get("input"), Mapping) else report.get("baseline")
    )
    candidate = (
        (report.get("output") or {}).get("path")
        if isinstance(report.get("output"), Mapping)
        else report.get("candidate")
    )
    return baseline, candidate


def histogram(
    series: Mapping[str, Sequence[float]], bins: int = HISTOGRAM_BINS, digits: int = 4
) -> tuple[list[str], dict[str, list[int]]]:
    """Shared bins over every series: labels (bin ranges) and counts per series."""
    values = [v for vs in series.values() for v in vs if is_num(v)]
    lo, hi = min(values), max(values)
    if hi <= lo:
        return [f"{lo:.{digits}g}"], {name: [sum(1 for v in vs if is_num(v))] for name, vs in series.items()}
    width = (hi - lo) / bins
    labels = [f"{lo + i * width:.{digits}g}–{lo + (i + 1) * width:.{digits}g}" for i in range(bins)]
    counts = {}
    for name, vs in series.items():
        row = [0] * bins
        for v in vs:
            if is_num(v):
                row[min(bins - 1, int((v - lo) / width))] += 1
        counts[name] = row
    return labels, counts
