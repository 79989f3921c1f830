"""Human-readable tables for the terminal (rich); the JSON report holds the same numbers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from onnxshrink.plugin.registry import default_registry


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _ratio(a: float | None, b: float | None) -> str:
    if not a or b is None:
        return "-"
    return f"{b / a:.3f}x"


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def size_table(before: dict[str, Any], after: dict[str, Any]) -> Table:
    table = Table(title="Model", title_justify="left")
    for col in ("", "before", "after", "ratio"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row(
        "file size",
        human_bytes(before["file_bytes"]),
        human_bytes(after["file_bytes"]),
        _ratio(before["file_bytes"], after["file_bytes"]),
    )
    table.add_row(
        "compressed",
        human_bytes(before["compressed_bytes"]),
        human_bytes(after["compressed_bytes"]),
        _ratio(before["compressed_bytes"], after["compressed_bytes"]),
    )
    table.add_row(
        "parameters", f"{before['params']:,}", f"{after['params']:,}", _ratio(before["params"], after["params"])
    )
    table.add_row(
        "non-zeros", f"{before['nonzeros']:,}", f"{after['nonzeros']:,}", _ratio(before["nonzeros"], after["nonzeros"])
    )
    sp = lambda s: f"{1 - s['nonzeros'] / s['params']:.1%}" if s["params"] else "-"  # noqa: E731
    table.add_row("sparsity", sp(before), sp(after), "")
    return table


def _non_default(plugin: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options that differ from the method's defaults (the full set is in the JSON report)."""
    info = default_registry().methods.get(plugin)
    if info is None:
        return options
    return {k: v for k, v in options.items() if (opt := info.cls.option(k)) is None or v != opt.default}


def steps_table(steps: list[dict[str, Any]]) -> Table:
    table = Table(title="Steps", title_justify="left")
    table.add_column("plugin")
    table.add_column("options")
    table.add_column("seconds", justify="right")
    table.add_column("summary")
    for step in steps:
        stats = step["stats"]
        summary = ", ".join(
            f"{k}={_num(v)}" for k, v in stats.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
        )
        options = (
            ", ".join(f"{k}={v}" for k, v in _non_default(step["plugin"], step["options"]).items()) or "(defaults)"
        )
        table.add_row(step["plugin"], Text(options), f"{step['seconds']:.3f}", Text(summary))
    return table


def latency_table(latency: dict[str, Any]) -> tuple[Table, list[str]]:
    """The latency table and the notes to print under it (reasons, errors, noise warnings)."""
    table = Table(title="Latency (ms, median of interleaved runs)", title_justify="left")
    for col in (
        "provider",
        "status",
        "baseline",
        "candidate",
        "ratio",
        "95% interval",
        "baseline p90",
        "candidate p90",
    ):
        table.add_column(col, justify="left" if col in ("provider", "status") else "right")
    notes = []
    for ep, entry in latency.items():
        status = entry.get("status", "?")
        if status != "ok":
            table.add_row(ep, status, "", "", "", "", "", "")
            notes.append(f"{ep}: {entry.get('reason') or entry.get('error') or status}")
            continue
        b, c = entry["baseline"], entry["candidate"]
        interval = entry.get("ratio_ci")
        shown = f"{interval[0]:.3f}-{interval[1]:.3f}x" if interval and None not in interval else ""
        table.add_row(
            ep,
            status,
            _num(b["median_ms"]),
            _num(c["median_ms"]),
            f"{entry['ratio']:.3f}x" if entry.get("ratio") is not None else "-",
            shown,
            _num(b["p90_ms"]),
            _num(c["p90_ms"]),
        )
        if entry.get("ratio") is None:
            notes.append(f"{ep}: no ratio: a timed run read 0 ns on the clock ({entry.get('clock', 'unknown')})")
        if entry.get("warning"):
            notes.append(f"{ep}: {entry['warning']}")
    return table, notes


def fidelity_table(fidelity: dict[str, Any]) -> Table:
    table = Table(title="Fidelity (candidate vs baseline)", title_justify="left")
    for col in ("output", "worst cosine", "mean cosine", "max abs error", "rel error", "SNR dB", "top-1 agreement"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for name, m in fidelity.get("outputs", {}).items():
        table.add_row(
            name,
            _num(m.get("cosine"), 6),
            _num(m.get("cosine_mean"), 6),
            _num(m.get("max_abs_error")),
            _num(m.get("rel_error")),
            _num(m.get("snr_db")),
            _num(m.get("top1_agreement")),
        )
    acc = fidelity.get("accuracy")
    if acc:
        table.caption = f"accuracy on labels: {acc['baseline']:.4f} -> {acc['candidate']:.4f} (drop {acc['drop']:+.4f})"
    return table


def gate_table(gate: dict[str, Any]) -> Table:
    table = Table(title=f"Gate: {'PASSED' if gate['passed'] else 'FAILED'}", title_justify="left")
    for col in ("check", "value", "result", "reason"):
        table.add_column(col)
    for check in gate["checks"]:
        table.add_row(
            Text(check["expr"]), _num(check.get("value"), 6), check["status"], Text(check.get("reason") or "")
        )
    return table


def print_report(report: dict[str, Any], console: Console) -> None:
    """Print the tables of a shrink report."""
    console.print(Text(f"{report['input']['path']} -> {report['output']['path']}", style="bold"))
    console.print(size_table(report["input"]["size"], report["output"]["size"]))
    console.print(steps_table(report["steps"]))
    print_validation(report.get("validation"), console)
    if "gate" in report:
        console.print(gate_table(report["gate"]))


def print_validation(validation: dict[str, Any] | None, console: Console) -> None:
    if not validation:
        return
    for warning in validation.get("data", {}).get("warnings", []):
        console.print(Text(f"warning: {warning}", style="yellow"))
    if validation.get("latency"):
        table, notes = latency_table(validation["latency"])
        console.print(table)
        for note in notes:
            console.print(Text(f"  note: {note}", style="dim"))
    if validation.get("fidelity"):
        console.print(fidelity_table(validation["fidelity"]))


SUMMARY_AFTER_S = 2.0  # steps shorter than this leave no start or end line
HEARTBEAT_EVERY_S = 10.0  # off a terminal, a long step prints a line this often


class _Counted:
    """A progress task that counts what was done (and moves a bar, when there is one)."""

    def __init__(self) -> None:
        self.done = 0.0
        self.moved: Any = None

    def advance(self, amount: float = 1) -> None:
        self.done += amount
        if self.moved is not None:
            self.moved(amount)


def _amount(done: float, total: float | None, unit: str) -> str:
    if unit == "B":
        return human_bytes(done) + (f" of {human_bytes(total)}" if total else "")
    return f"{done:g}" + (f" of {total:g}" if total else "")


def _rate(done: float, seconds: float, unit: str) -> str:
    if not done or seconds <= 0:
        return ""
    return f", {done / seconds / 1e6:.0f} MB/s" if unit == "B" else f", {done / seconds:.3g}/s"


class Heartbeat:
    """The lines a long step leaves in a log that is not a terminal (CI): one when it has run for
    ``SUMMARY_AFTER_S``, one every ``HEARTBEAT_EVERY_S`` while it runs, and one at the end with the time
    and the throughput. ``tick(now)`` says which line is due; a daemon thread asks it twice a second."""

    def __init__(self, description: str, task: _Counted, total: float | None, unit: str, started: float):
        self.description, self.task, self.total, self.unit = description, task, total, unit
        self.started = started
        self.last: float | None = None  # when the last line was printed

    def tick(self, now: float) -> str | None:
        elapsed = now - self.started
        if self.last is None:
            if elapsed < SUMMARY_AFTER_S:
                return None
            self.last = now
            return f"{self.description}: started ({self._so_far(elapsed)})"
        if now - self.last < HEARTBEAT_EVERY_S:
            return None
        self.last = now
        return f"{self.description}: running ({self._so_far(elapsed)})"

    def end(self, now: float) -> str | None:
        elapsed = now - self.started
        if elapsed < SUMMARY_AFTER_S:
            return None
        done = self.task.done
        if self.unit == "B" and done:
            return f"{self.description}: {human_bytes(done)} in {elapsed:.1f} s{_rate(done, elapsed, 'B')}"
        if done:
            return (
                f"{self.description}: done, {_amount(done, self.total, '')} in {elapsed:.1f} "
                f"s{_rate(done, elapsed, '')}"
            )
        return f"{self.description}: done in {elapsed:.1f} s"

    def _so_far(self, elapsed: float) -> str:
        done = f"{_amount(self.task.done, self.total, self.unit)} done, " if self.task.done else ""
        return f"{done}{elapsed:.0f} s"


_BEATING: list[Heartbeat] = []  # open steps off a terminal; only the innermost prints "running" lines


@contextlib.contextmanager
def _heartbeat_thread(console: Console, beat: Heartbeat) -> Iterator[None]:
    stop = threading.Event()
    _BEATING.append(beat)

    def run() -> None:
        while not stop.wait(0.5):
            if beat.last is not None and _BEATING and _BEATING[-1] is not beat:
                beat.last = time.perf_counter()  # an inner step is reporting; stay quiet
                continue
            line = beat.tick(time.perf_counter())
            if line:
                console.print(line, markup=False, highlight=False)

    thread = threading.Thread(target=run, name="onnxshrink-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        _BEATING.remove(beat)


class _AmountColumn(ProgressColumn):
    """Bytes done (and total) for byte tasks, N of M for counted ones."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes, self._items = DownloadColumn(), MofNCompleteColumn()

    def render(self, task: Any) -> Text:
        if task.fields.get("unit") == "B":
            return self._bytes.render(task)
        return self._items.render(task) if task.total else Text("")


class _SpeedColumn(ProgressColumn):
    def __init__(self) -> None:
        super().__init__()
        self._speed = TransferSpeedColumn()

    def render(self, task: Any) -> Text:
        return self._speed.render(task) if task.fields.get("unit") == "B" else Text("")


_LIVE: dict[int, list[Any]] = {}  # id(console) -> [Progress, open tasks]: nested steps share one display


@contextlib.contextmanager
def _shared_progress(console: Console) -> Iterator[Progress]:
    entry = _LIVE.get(id(console))
    if entry is None:
        columns = [
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            _AmountColumn(),
            _SpeedColumn(),
            TimeElapsedColumn(),
        ]
        progress = Progress(*columns, console=console, transient=True)
        progress.start()
        entry = _LIVE[id(console)] = [progress, 0]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].stop()
            del _LIVE[id(console)]


@contextlib.contextmanager
def rich_progress(console: Console, description: str, total: float | None, unit: str = "") -> Iterator[Any]:
    """Progress of a step on ``console`` (stderr).

    On a terminal: a bar (nested steps share one display, each on its own line). Off a terminal (logs,
    CI): a line when the step has run for ``SUMMARY_AFTER_S`` seconds, one every ``HEARTBEAT_EVERY_S``
    while it runs, and one at the end with the time and throughput (``saving: 3.00 GiB in 9.1 s,
    353 MB/s``). A step with ``unit="B"`` also leaves that summary line on a terminal.
    """
    task = _Counted()
    started = time.perf_counter()
    beat = Heartbeat(description, task, total, unit, started)
    if console.is_terminal:
        with _shared_progress(console) as progress:
            task_id = progress.add_task(description, total=total, unit=unit)
            task.moved = lambda amount: progress.advance(task_id, amount)
            try:
                yield task
            finally:
                progress.remove_task(task_id)
        line = beat.end(time.perf_counter()) if unit == "B" and task.done else None
    else:
        with _heartbeat_thread(console, beat):
            yield task
        line = beat.end(time.perf_counter())
    if line:
        console.print(line, markup=False, highlight=False)


def print_bench(result: dict[str, Any], console: Console) -> None:
    """Print ``onnxshrink bench`` results: one model (size, latency) or a pair (full validation)."""
    if "validation" in result:
        console.print(Text(f"{result['baseline']} (baseline) vs {result['candidate']} (candidate)", style="bold"))
        validation = result["validation"]
        console.print(size_table(validation["size"]["baseline"], validation["size"]["candidate"]))
        print_validation(validation, console)
        return
    console.print(Text(result["model"], style="bold"))
    size = result["size"]
    console.print(
        f"file {human_bytes(size['file_bytes'])}  compressed {human_bytes(size['compressed_bytes'])}  "
        f"parameters {size['params']:,}  non-zeros {size['nonzeros']:,}"
    )
    table = Table(title="Latency (ms)", title_justify="left")
    for col in ("provider", "status", "median", "p90", "min", "runs"):
        table.add_column(col, justify="left" if col in ("provider", "status") else "right")
    notes = []
    for ep, entry in result["latency"].items():
        if entry.get("status") != "ok":
            table.add_row(ep, entry.get("status", "?"), "", "", "", "")
            notes.append(f"{ep}: {entry.get('reason') or entry.get('error') or ''}")
            continue
        table.add_row(
            ep, "ok", _num(entry["median_ms"]), _num(entry["p90_ms"]), _num(entry["min_ms"]), _num(entry["runs"])
        )
        if entry.get("warning"):
            notes.append(f"{ep}: {entry['warning']}")
    console.print(table)
    for note in notes:
        console.print(Text(f"  note: {note}", style="dim"))
