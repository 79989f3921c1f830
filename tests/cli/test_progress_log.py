"""Progress off a terminal (issue 15, item 7): a long step leaves a start line, a line every
HEARTBEAT_EVERY_S while it runs, and an end line with its time and throughput. The schedule is tested
with given clock values (no timing in the assertions)."""

from __future__ import annotations

import io
import threading

from rich.console import Console

import onnxshrink.cli.console as console_module
from onnxshrink.cli.console import Heartbeat, _Counted, rich_progress


def test_heartbeat_schedule():
    task = _Counted()
    beat = Heartbeat("gptq: quantizing", task, 40, "", started=100.0)
    assert beat.tick(101.0) is None  # short steps stay silent
    assert beat.tick(102.5) == "gptq: quantizing: started (2 s)"
    assert beat.tick(110.0) is None
    task.advance(12)
    assert beat.tick(112.5) == "gptq: quantizing: running (12 of 40 done, 12 s)"
    assert beat.tick(113.0) is None
    task.advance(28)
    assert beat.end(120.0) == "gptq: quantizing: done, 40 of 40 in 20.0 s, 2/s"


def test_heartbeat_bytes_and_untimed_steps():
    task = _Counted()
    task.advance(3 * 2**20)
    assert Heartbeat("saving", task, None, "B", 0.0).end(2.0) == "saving: 3.00 MiB in 2.0 s, 2 MB/s"
    assert Heartbeat("validating", _Counted(), None, "", 0.0).end(41.25) == "validating: done in 41.2 s"
    assert Heartbeat("validating", _Counted(), None, "", 0.0).end(1.0) is None


def test_off_a_terminal_a_step_prints_start_and_end(monkeypatch):
    monkeypatch.setattr(console_module, "SUMMARY_AFTER_S", 0.0)
    out = io.StringIO()
    console = Console(file=out, width=200)
    started = threading.Event()
    with rich_progress(console, "int_quant", None) as task:
        for _ in range(200):  # wait (up to 10 s) for the heartbeat thread's start line
            if "int_quant: started" in out.getvalue():
                started.set()
                break
            threading.Event().wait(0.05)
        task.advance(3)
    lines = out.getvalue().splitlines()
    assert started.is_set(), lines
    assert lines[-1].startswith("int_quant: done, 3 in ")


def test_failing_step_prints_no_done_line(monkeypatch):
    monkeypatch.setattr(console_module, "SUMMARY_AFTER_S", 0.0)
    out = io.StringIO()
    try:
        with rich_progress(Console(file=out, width=200), "int_quant", None):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert "done" not in out.getvalue()


def test_nested_bars_share_one_display_on_a_terminal():
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    with rich_progress(console, "int_quant", None):
        with rich_progress(console, "int_quant: calibrating", 4) as inner:  # rich refuses two live displays
            inner.advance(4)
    assert not console_module._LIVE
