"""The sections of a shrink, gate or bench report page: verdict and gate checks, headline numbers,
where the bytes are, latency per provider, fidelity per output, steps and data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onnxshrink.reports.html_page import (
    HISTOGRAM_BINS,
    Page,
    badge,
    cell,
    esc,
    histogram,
    html_table,
    human_bytes,
    is_num,
    model_paths,
    num,
    ratio_text,
    section,
    tile,
)

TOP_LAYERS = 25  # layers drawn in the per-layer chart (the table lists every row)

# --------------------------------------------------------------------------- shrink / gate / bench


def render_single(page: Page, report: Mapping[str, Any], kind: str) -> None:
    baseline, candidate = model_paths(report)
    paths = f"<code>{esc(baseline)}</code>" + (f" → <code>{esc(candidate)}</code>" if candidate else "")
    page.add(f'<header class="top"><h1>onnxshrink {esc(kind)} report</h1><div class="paths">{paths}</div></header>')
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


def _verdict(page: Page, report: Mapping[str, Any], kind: str) -> None:
    gate = report.get("gate")
    if not isinstance(gate, Mapping) and kind in ("bench", "compare"):
        return  # measurements only: there is nothing to judge
    if not isinstance(gate, Mapping):
        page.add(
            '<div class="verdict none"><span class="big">NO GATE</span><span>No --gate checks were given: numbers '
            "only, no verdict.</span></div>"
        )
        return
    checks = gate.get("checks") or []
    passed = sum(1 for c in checks if c.get("passed"))
    verdict = "pass" if gate.get("passed") else "fail"
    page.add(
        f'<div class="verdict {verdict}"><span class="big">GATE '
        f"{'PASSED' if verdict == 'pass' else 'FAILED'}</span><span>{passed} of {len(checks)} checks "
        "passed</span></div>"
    )
    rows = []
    for check in checks:
        status = str(check.get("status") or ("pass" if check.get("passed") else "fail"))
        rows.append(
            "<tr>"
            + "".join(
                [
                    cell(f"<code>{esc(check.get('expr'))}</code>"),
                    cell(esc(num(check.get("value"), 6)), check.get("value"), "num"),
                    cell(badge(status)),
                    cell(esc(check.get("reason"))),
                ]
            )
            + "</tr>"
        )
    page.add(section("Gate checks", html_table(["check", "value", "status", "reason"], rows, numeric=(1,))))


def _tiles(page: Page, report: Mapping[str, Any], kind: str) -> None:
    validation = report.get("validation") or {}
    size = validation.get("size") or {}
    tiles = []
    before = (
        (report.get("input") or {}).get("size") if isinstance(report.get("input"), Mapping) else size.get("baseline")
    )
    after = (
        (report.get("output") or {}).get("size") if isinstance(report.get("output"), Mapping) else size.get("candidate")
    )
    if kind == "bench":
        single = report.get("size") or {}
        tiles.append(
            tile("file size", human_bytes(single.get("file_bytes")), f"{num(single.get('params'))} parameters")
        )
    elif isinstance(before, Mapping) and isinstance(after, Mapping):
        ratio = (
            after.get("file_bytes") / before["file_bytes"]
            if is_num(after.get("file_bytes")) and before.get("file_bytes")
            else None
        )
        tiles.append(
            tile(
                "file size",
                f"{human_bytes(before.get('file_bytes'))} → {human_bytes(after.get('file_bytes'))}",
                f"ratio {ratio_text(ratio)}",
            )
        )
        if (
            is_num(before.get("compressed_bytes"))
            and is_num(after.get("compressed_bytes"))
            and before["compressed_bytes"]
        ):
            tiles.append(
                tile(
                    "compressed (zlib)",
                    f"{human_bytes(before['compressed_bytes'])} → {human_bytes(after['compressed_bytes'])}",
                    f"ratio {ratio_text(after['compressed_bytes'] / before['compressed_bytes'])}",
                )
            )
    for ep, entry in (validation.get("latency") or {}).items():
        if isinstance(entry, Mapping) and entry.get("status") == "ok":
            ci = entry.get("ratio_ci")
            sub = (
                f"interval {num(ci[0])}–{num(ci[1])}"
                if isinstance(ci, list) and len(ci) == 2
                else f"{num((entry.get('candidate') or {}).get('median_ms'))} ms median"
            )
            tiles.append(tile(f"latency {ep}", ratio_text(entry.get("ratio")), sub))
    fidelity = validation.get("fidelity") or {}
    if is_num(fidelity.get("cosine")):
        tiles.append(
            tile(
                "worst cosine",
                f"{fidelity['cosine']:.6f}",
                "over outputs" + (" and feeds" if _any_per_feed(fidelity) else ""),
            )
        )
    accuracy = fidelity.get("accuracy")
    if isinstance(accuracy, Mapping) and is_num(accuracy.get("drop")):
        tiles.append(
            tile(
                "accuracy drop",
                f"{100 * accuracy['drop']:.2f} pt",
                f"{num(accuracy.get('baseline'))} → {num(accuracy.get('candidate'))}",
            )
        )
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
                    if not is_num(score) and is_num(item.get("cosine_alone")):
                        score = 1.0 - item["cosine_alone"]
                    if isinstance(name, str) and is_num(score):
                        found.setdefault(name, float(score))
                visit(item)

    for step in report.get("steps") or []:
        if isinstance(step, Mapping):
            visit(step.get("stats"))
    return found


def _bytes_section(page: Page, report: Mapping[str, Any]) -> None:
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
    charts = [
        page.chart(
            {"kind": "bar", "horizontal": True, "unit": "bytes", "labels": ops, "series": series},
            "stored bytes per op type",
            60 + 34 * len(ops) * (1 + has_after) // 2 + 40,
        )
    ]
    layers: dict[str, list[int]] = {}
    for r in rows:  # a layer's inputs (weight, bias, scales) summed
        totals = layers.setdefault(r["layer"], [0, 0])
        totals[0] += (r.get("before") or {}).get("bytes", 0)
        totals[1] += (r.get("after") or {}).get("bytes", 0)
    top = sorted(layers.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:TOP_LAYERS]
    layer_series = [{"label": first, "role": "before", "values": [t[0] for _, t in top]}]
    if has_after:
        layer_series.append({"label": "after", "role": "after", "values": [t[1] for _, t in top]})
    title = (
        f"stored bytes per layer (largest {len(top)} of {len(layers)})"
        if len(layers) > len(top)
        else "stored bytes per layer"
    )
    charts.append(
        page.chart(
            {
                "kind": "bar",
                "horizontal": True,
                "unit": "bytes",
                "labels": [name for name, _ in top],
                "series": layer_series,
            },
            title,
            60 + 22 * len(top) * (1 + has_after) // 2 + 40,
        )
    )
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
        shape = "×".join(str(d) for d in r.get("shape") or []) + (
            f" → {'×'.join(str(d) for d in a['shape'])}" if a.get("shape") else ""
        )
        cells = [
            cell(esc(r.get("layer")), cls="mono"),
            cell(esc(r.get("op_type"))),
            cell(
                esc(r.get("tensor"))
                + (' <span class="muted">and every other input (op replaced)</span>' if r.get("slot") is None else ""),
                cls="mono",
            ),
            cell(esc(shape)),
            cell(esc(b.get("form", "—"))),
            cell(esc(human_bytes(b.get("bytes"))), b.get("bytes"), "num"),
        ]
        if has_after:
            ratio = a.get("bytes", 0) / b["bytes"] if b.get("bytes") else None
            cells += [
                cell(esc(a.get("form", "removed" if b else "—"))),
                cell(esc(human_bytes(a.get("bytes", 0))), a.get("bytes", 0), "num"),
                cell(esc(f"{ratio:.3f}" if ratio is not None else "—"), ratio, "num"),
            ]
        if sensitivity:
            score = sensitivity.get(r.get("tensor"), sensitivity.get(r.get("layer")))
            cells.append(cell(esc(f"{score:.3g}" if score is not None else "—"), score, "num"))
        body.append("<tr>" + "".join(cells) + "</tr>")
    other = tensors.get("other") or {}
    notes = [
        "Every stored tensor is counted once, at the layer input it feeds (through any decoder onnxruntime folds at "
        "load). Click a column to sort."
    ]
    if other.get("rows"):
        notes.append(
            f"{other['rows']} smaller layer inputs are not listed ({human_bytes(other.get('before'))} before, "
            f"{human_bytes(other.get('after'))} after)."
        )
    unattributed = tensors.get("unattributed") or {}
    if unattributed.get("before") or unattributed.get("after"):
        notes.append(
            f"Stored tensors no layer reads: {human_bytes(unattributed.get('before'))} before, "
            f"{human_bytes(unattributed.get('after'))} after."
        )
    table = html_table(header, body, sortable=True, numeric=numeric, scroll=True)
    page.add(
        section(
            "Where the bytes are",
            f'<div class="grid2">{"".join(charts)}</div><h3>Per tensor</h3>{table}',
            esc(" ".join(notes)),
        )
    )


def _whole_model_bytes(page: Page, report: Mapping[str, Any]) -> None:
    size = (report.get("validation") or {}).get("size") or {}
    before = (
        (report.get("input") or {}).get("size") if isinstance(report.get("input"), Mapping) else size.get("baseline")
    )
    after = (
        (report.get("output") or {}).get("size") if isinstance(report.get("output"), Mapping) else size.get("candidate")
    )
    if not isinstance(before, Mapping):
        before = (
            report.get("size")
            if isinstance(report.get("size"), Mapping) and "file_bytes" in report.get("size", {})
            else None
        )
    if not isinstance(before, Mapping):
        return
    keys = [k for k in ("file_bytes", "compressed_bytes") if is_num(before.get(k))]
    series = [{"label": "baseline" if after else "model", "role": "before", "values": [before[k] for k in keys]}]
    if isinstance(after, Mapping):
        series.append(
            {
                "label": "candidate",
                "role": "after",
                "values": [after.get(k) if is_num(after.get(k)) else 0 for k in keys],
            }
        )
    chart = page.chart(
        {
            "kind": "bar",
            "horizontal": True,
            "unit": "bytes",
            "labels": [k.replace("_", " ") for k in keys],
            "series": series,
        },
        "model size",
        200,
    )
    rows = []
    for key in ("file_bytes", "compressed_bytes", "params", "nonzeros"):
        if key in before:
            fmt = human_bytes if key.endswith("bytes") else num
            cells = [cell(esc(key)), cell(esc(fmt(before.get(key))), before.get(key), "num")]
            if isinstance(after, Mapping):
                cells.append(cell(esc(fmt(after.get(key))), after.get(key), "num"))
            rows.append("<tr>" + "".join(cells) + "</tr>")
    header = ["", "baseline", "candidate"] if isinstance(after, Mapping) else ["", "model"]
    page.add(
        section(
            "Size",
            f'<div class="grid2">{chart}<div>{html_table(header, rows, numeric=(1, 2))}</div></div>',
            "This report has whole-model sizes only (no per-tensor breakdown).",
        )
    )


def _latency_section(page: Page, latency: Mapping[str, Any], *, single: bool) -> None:
    blocks, rows = [], []
    for ep, entry in latency.items():
        if not isinstance(entry, Mapping):
            continue
        status = str(entry.get("status", "ok"))
        if status != "ok":
            rows.append(
                "<tr>"
                + cell(esc(ep))
                + cell(badge(status))
                + f'<td colspan="5">{esc(entry.get("reason") or entry.get("error") or "")}</td></tr>'
            )
            continue
        sides = (
            {"model": entry}
            if single
            else {"baseline": entry.get("baseline") or {}, "candidate": entry.get("candidate") or {}}
        )
        times = {name: side.get("times_ms") for name, side in sides.items()}
        if all(isinstance(t, list) and t for t in times.values()):
            labels, counts = histogram(times)
            series = [
                {"label": name, "role": "before" if name != "candidate" else "after", "values": counts[name]}
                for name in sides
            ]
            blocks.append(
                page.chart(
                    {
                        "kind": "bar",
                        "unit": "",
                        "labels": labels,
                        "series": series,
                        "value_title": "runs",
                        "category_title": "milliseconds per run",
                    },
                    f"{ep}: per-run latency, interleaved runs",
                    260,
                )
            )
        else:
            labels = ["median", "p90", "min"]
            series = [
                {
                    "label": name,
                    "role": "before" if name != "candidate" else "after",
                    "values": [
                        side.get(k + "_ms") if is_num(side.get(k + "_ms")) else 0 for k in ("median", "p90", "min")
                    ],
                }
                for name, side in sides.items()
            ]
            blocks.append(
                page.chart(
                    {"kind": "bar", "unit": "ms", "labels": labels, "series": series},
                    f"{ep}: latency (no per-run times in this report)",
                    220,
                )
            )
        for name, side in sides.items():
            ci = entry.get("ratio_ci")
            ratio = (
                ""
                if single or name == "baseline"
                else ratio_text(entry.get("ratio"))
                + (f" [{num(ci[0])}, {num(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "")
            )
            rows.append(
                "<tr>"
                + "".join(
                    [
                        cell(esc(ep)),
                        cell(esc(name)),
                        cell(esc(num(side.get("median_ms"))), side.get("median_ms"), "num"),
                        cell(esc(num(side.get("p90_ms"))), side.get("p90_ms"), "num"),
                        cell(esc(num(side.get("runs"))), side.get("runs"), "num"),
                        cell(esc(ratio)),
                        cell(
                            f'<span class="warn">{esc(entry.get("warning"))}</span>'
                            if entry.get("warning") and name != "baseline"
                            else ""
                        ),
                    ]
                )
                + "</tr>"
            )
    table = html_table(
        ["provider", "model", "median ms", "p90 ms", "runs", "ratio [interval]", "note"], rows, numeric=(2, 3, 4)
    )
    note = (
        "Baseline and candidate timed interleaved (A B A B …) after warm-up, fixed thread count. The ratio is "
        "candidate / baseline median; its interval, where given, is what a gate should trust on a noisy machine."
    )
    page.add(
        section(
            "Latency per provider", (f'<div class="grid2">{"".join(blocks)}</div>' if blocks else "") + table, esc(note)
        )
    )


def _fidelity_section(page: Page, fidelity: Mapping[str, Any]) -> None:
    if fidelity.get("status") == "failed":
        page.add(section("Fidelity", f"<p>{badge('failed')} {esc(fidelity.get('error'))}</p>"))
        return
    outputs = fidelity.get("outputs") or {}
    rows, charts = [], []
    for name, out in outputs.items():
        if not isinstance(out, Mapping):
            continue
        per_feed = [v for v in out.get("cosine_per_feed") or [] if is_num(v)]
        worst = out.get("cosine_worst", out.get("cosine"))
        mean = out.get("cosine_mean", sum(per_feed) / len(per_feed) if per_feed else out.get("cosine"))
        rows.append(
            "<tr>"
            + "".join(
                [
                    cell(esc(name), cls="mono"),
                    cell(esc(num(worst, 7)), worst, "num"),
                    cell(esc(num(mean, 7)), mean, "num"),
                    cell(esc(num(out.get("max_abs_error"))), out.get("max_abs_error"), "num"),
                    cell(esc(num(out.get("rel_error"))), out.get("rel_error"), "num"),
                    cell(esc(num(out.get("top1_agreement"))), out.get("top1_agreement"), "num"),
                    cell(esc(len(per_feed) if per_feed else "—"), len(per_feed), "num"),
                ]
            )
            + "</tr>"
        )
        if per_feed:
            labels, counts = histogram({"feeds": per_feed}, bins=min(HISTOGRAM_BINS, max(5, len(per_feed))), digits=6)
            charts.append(
                page.chart(
                    {
                        "kind": "bar",
                        "unit": "",
                        "labels": labels,
                        "series": [{"label": "feeds", "role": "after", "values": counts["feeds"]}],
                        "value_title": "feeds",
                        "category_title": "cosine",
                    },
                    f"{name}: cosine per feed",
                    220,
                )
            )
    body = (f'<div class="grid2">{"".join(charts)}</div>' if charts else "") + html_table(
        ["output", "worst cosine", "mean cosine", "max abs error", "rel error", "top-1 agreement", "feeds"],
        rows,
        sortable=True,
        numeric=(1, 2, 3, 4, 5, 6),
    )
    accuracy = fidelity.get("accuracy")
    if isinstance(accuracy, Mapping):
        body += (
            f"<p>Accuracy on labels ({esc(accuracy.get('output'))}): {esc(num(accuracy.get('baseline')))} → "
            f"{esc(num(accuracy.get('candidate')))}, drop {esc(num(accuracy.get('drop')))}.</p>"
        )
    warnings = list(fidelity.get("warnings") or [])
    if warnings:
        body += "".join(f'<p class="warn">{esc(w)}</p>' for w in warnings)
    page.add(
        section(
            "Fidelity per output",
            body,
            "Candidate against baseline on the evaluation feeds. The worst feed tells a release more than the mean.",
        )
    )


def _steps_section(page: Page, report: Mapping[str, Any]) -> None:
    steps = [s for s in report.get("steps") or [] if isinstance(s, Mapping)]
    if not steps:
        return
    rows = []
    for step in steps:
        options = ", ".join(f"{k}={v}" for k, v in (step.get("options") or {}).items())
        warnings = "".join(f'<div class="warn">{esc(w)}</div>' for w in step.get("warnings") or [])
        rows.append(
            "<tr>"
            + "".join(
                [
                    cell(f"<b>{esc(step.get('plugin'))}</b>"),
                    cell(f'<span class="mono">{esc(options)}</span>'),
                    cell(esc(num(step.get("seconds"), 3)), step.get("seconds"), "num"),
                    cell(warnings or '<span class="muted">—</span>'),
                ]
            )
            + "</tr>"
        )
    page.add(section("Steps", html_table(["plugin", "options", "seconds", "warnings"], rows, numeric=(2,))))


def _data_section(page: Page, report: Mapping[str, Any]) -> None:
    data = (report.get("validation") or {}).get("data") or report.get("data")
    if not isinstance(data, Mapping):
        return
    source = data.get("source") or "synthetic inputs"
    text = (
        f"<p><code>{esc(source)}</code>: {esc(num(data.get('samples')))} samples in {esc(num(data.get('feeds')))} feeds"
    )
    text += f" ({esc(data.get('role'))})</p>" if data.get("role") else "</p>"
    text += "".join(f'<p class="warn">{esc(w)}</p>' for w in data.get("warnings") or [])
    page.add(section("Data", text))


def _footer(page: Page, report: Mapping[str, Any]) -> None:
    tool = report.get("tool") if isinstance(report.get("tool"), Mapping) else {}
    parts = [f"{k} {v}" for k, v in tool.items() if k != "name"]
    seed = f" · seed {report['seed']}" if "seed" in report else ""
    page.add(
        f"<footer>onnxshrink report ({esc(report.get('schema'))}) · {esc(' · '.join(parts))}{esc(seed)} · charts: "
        "Chart.js (MIT), inlined</footer>"
    )
