"""The page of a tune run (schema ``onnxshrink.tune/1``): the chosen trial, the Pareto front, every trial."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onnxshrink.reports.html_page import Page, badge, cell, esc, html_table, human_bytes, is_num, num, section, tile

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


def render_tune(page: Page, report: Mapping[str, Any]) -> None:
    model = report.get("model") if isinstance(report.get("model"), Mapping) else {}
    trials = [t for t in report.get("trials") or [] if isinstance(t, Mapping)]
    pareto = set(report.get("pareto") or [])
    chosen = report.get("chosen")
    page.add(
        '<header class="top"><h1>onnxshrink tune report</h1><div '
        f'class="paths"><code>{esc(model.get("path"))}</code> · '
        f"{esc(human_bytes(model.get('file_bytes')))}</div></header>"
    )
    by_number = {t.get("number"): t for t in trials}
    best = by_number.get(chosen)
    if best is not None:
        metrics = best.get("metrics") or {}
        page.add(
            '<div class="verdict pass"><span class="big">CHOSEN: TRIAL '
            f"{esc(chosen)}</span><span>{esc(_chain_text(best.get('chain')))} · size ratio "
            f"{esc(num(metrics.get('size_ratio')))} · cosine {esc(num(metrics.get('cosine'), 6))}</span></div>"
        )
    else:
        page.add(
            '<div class="verdict fail"><span class="big">NO TRIAL CHOSEN</span><span>No trial passed every '
            "gate.</span></div>"
        )
    ok = [t for t in trials if t.get("status") == "ok"]
    tiles = [
        tile("trials", str(len(trials)), f"{len(ok)} ok, {sum(1 for t in trials if t.get('passed'))} passed the gates"),
        tile(
            "objective",
            str(report.get("objective") or "—"),
            "gates: " + "; ".join(str(g) for g in report.get("gates") or []) or "none",
        ),
        tile("Pareto front", str(len(pareto)), "trials no other beats on both axes"),
        tile("search time", f"{num(report.get('seconds'), 3)} s"),
    ]
    page.add(f'<div class="tiles">{"".join(tiles)}</div>')
    points = []
    use_latency = any(isinstance((t.get("metrics") or {}).get("latency_ratio"), Mapping) for t in ok)
    for t in ok:
        metrics = t.get("metrics") or {}
        latency = metrics.get("latency_ratio") if isinstance(metrics.get("latency_ratio"), Mapping) else {}
        y = latency.get("cpu", next(iter(latency.values()), None)) if use_latency else metrics.get("cosine")
        if not (is_num(metrics.get("size_ratio")) and is_num(y)):
            continue
        points.append(
            {
                "x": metrics["size_ratio"],
                "y": y,
                "trial": t.get("number"),
                "cosine": metrics.get("cosine") if is_num(metrics.get("cosine")) else None,
                "pareto": t.get("number") in pareto,
                "chosen": t.get("number") == chosen,
                "chain": _chain_text(t.get("chain")),
            }
        )
    body = ""
    if points:
        y_title = "latency ratio (cpu)" if use_latency else "cosine"
        body = page.chart(
            {"kind": "pareto", "points": points, "x_title": "size ratio", "y_title": y_title},
            f"size ratio against {y_title}, coloured by cosine (red low, teal high)",
            380,
        )
    rows = []
    for t in trials:
        metrics = t.get("metrics") or {}
        latency = metrics.get("latency_ratio") if isinstance(metrics.get("latency_ratio"), Mapping) else {}
        lat = latency.get("cpu", next(iter(latency.values()), None)) if latency else None
        number = t.get("number")
        flags = ("chosen" if number == chosen else "") + (" Pareto" if number in pareto else "")
        status = str(t.get("status"))
        rows.append(
            f"<tr{' class=chosen' if number == chosen else ''}>"
            + "".join(
                [
                    cell(esc(number), number, "num"),
                    cell(esc(_chain_text(t.get("chain"))), cls="mono"),
                    cell(
                        badge(status) + (f' <span class="warn">{esc(t.get("error"))}</span>' if t.get("error") else "")
                    ),
                    cell(badge("pass" if t.get("passed") else "fail", "yes" if t.get("passed") else "no")),
                    cell(esc(num(metrics.get("size_ratio"))), metrics.get("size_ratio"), "num"),
                    cell(esc(human_bytes(metrics.get("file_bytes"))), metrics.get("file_bytes"), "num"),
                    cell(esc(num(metrics.get("cosine"), 7)), metrics.get("cosine"), "num"),
                    cell(esc(num(lat)), lat, "num"),
                    cell(esc(num(t.get("seconds"), 3)), t.get("seconds"), "num"),
                    cell(esc(flags.strip())),
                ]
            )
            + "</tr>"
        )
    body += "<h3>Every trial</h3>" + html_table(
        ["#", "chain", "status", "passed", "size ratio", "file", "cosine", "latency ratio", "seconds", ""],
        rows,
        sortable=True,
        numeric=(0, 4, 5, 6, 7, 8),
        scroll=True,
    )
    page.add(
        section(
            "Search: the Pareto front",
            body,
            "Each point is a trial that ran; the front holds the trials no other beats on both size and latency. "
            "Click a column to sort.",
        )
    )
    page.add(f"<footer>onnxshrink report ({esc(report.get('schema'))}) · charts: Chart.js (MIT), inlined</footer>")
