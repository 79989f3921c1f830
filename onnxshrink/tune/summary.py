"""The tune result on the terminal: the Pareto front and the chosen model (the report holds every trial)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def chain_text(chain: list[dict[str, Any]], float_format: str = "") -> str:
    """``weight_prune:sparsity=0.5 -> int_quant -> short_names`` from a trial's ``chain``."""

    def value(v: Any) -> str:
        return format(v, float_format) if isinstance(v, float) else str(v)

    return " -> ".join(
        s["plugin"] + (":" + ",".join(f"{k}={value(v)}" for k, v in s["options"].items()) if s["options"] else "")
        for s in chain
    )


def _chain(trial: dict[str, Any]) -> str:
    return chain_text(trial["chain"])


def print_summary(report: dict[str, Any], console: Console) -> None:
    trials = {t["number"]: t for t in report["trials"]}
    counts: dict[str, int] = {}
    for t in report["trials"]:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(
        f"[bold]tune[/] {report['model']['path']}: {len(trials)} trials ({shown or 'none'}) in "
        f"{report['seconds']:.0f} s" + (" (interrupted)" if report.get("interrupted") else "")
    )
    providers = report.get("providers") or ["cpu"]
    table = Table(title="Pareto front (timed candidates)", title_justify="left")
    for col in ("trial", "size", *[f"latency {ep}" for ep in providers], "cosine", "passed", "chain"):
        table.add_column(col, justify="left" if col == "chain" else "right")
    for number in report["pareto"]:
        t = trials[number]
        m = t["metrics"]
        ratios = m.get("latency_ratio") or {}
        table.add_row(
            str(number) + (" *" if number == report["chosen"] else ""),
            f"{m['size_ratio']:.3f}x",
            *[f"{ratios[ep]:.3f}x" if ratios.get(ep) is not None else "-" for ep in providers],
            f"{m['cosine']:.5f}" if m.get("cosine") is not None else "-",
            "yes" if t["passed"] else "no",
            Text(_chain(t)),
        )
    if report["pareto"]:
        console.print(table)
    if report["chosen"] is None:
        console.print(
            Text("no model passed every gate: " + ", ".join(report["gates"]) + "; nothing written", style="red")
        )
    else:
        t = trials[report["chosen"]]
        console.print(
            Text(
                f"chosen: trial {t['number']} ({_chain(t)}), size {t['metrics']['size_ratio']:.3f}x, written to "
                f"{report['output']}",
                style="green",
            )
        )
