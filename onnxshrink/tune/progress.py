"""Progress of a tune run: trials done, best so far, time left.

On a terminal a status line is redrawn after every trial; off a terminal (CI logs) one line is
printed at most every ``interval`` seconds, plus one when the search ends.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class TuneProgress:
    def __init__(self, console: Console | None, deadline: float | None, max_trials: int | None, interval: float = 15.0):
        self.console, self.deadline, self.max_trials, self.interval = console, deadline, max_trials, interval
        self.done = self.failed = 0
        self.best: dict[str, Any] | None = None
        self._last = 0.0
        self._status = None
        if console is not None and console.is_terminal:
            self._status = console.status("tune: starting", spinner="dots")
            self._status.start()

    def line(self) -> str:
        total = f"/{self.max_trials}" if self.max_trials else ""
        best = "none passed yet"
        if self.best is not None:
            m = self.best["metrics"]
            best = (
                f"best trial {self.best['number']}: size {m['size_ratio']:.3f}x, cosine "
                f"{m['cosine'] if m['cosine'] is None else round(m['cosine'], 5)}"
            )
        left = f", {_clock(self.deadline - time.monotonic())} left" if self.deadline is not None else ""
        return f"tune: {self.done}{total} trials done ({self.failed} failed), {best}{left}"

    def trial(self, entry: dict[str, Any]) -> None:
        self.done += 1
        if entry["status"] != "ok":
            self.failed += 1
        elif entry["gates_passed_untimed"]:
            key = lambda t: (t["metrics"]["file_bytes"], -(t["metrics"]["cosine"] or 0))  # noqa: E731
            if self.best is None or key(entry) < key(self.best):
                self.best = entry
        self._show()

    def say(self, message: str) -> None:
        if self.console is None:
            return
        if self._status is not None:
            self._status.update(message)
        else:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def _show(self, force: bool = False) -> None:
        if self.console is None:
            return
        if self._status is not None:
            self._status.update(self.line())
        elif force or time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)

    def finish(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self.console is not None:
            self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)
