"""One tune trial: run a chain with ``onnxshrink.run.shrink``, measure size and fidelity, judge the gates
that need no timing. ``run_isolated`` runs it in a child process with its own time and memory limits.

A trial spec is a plain dict (it crosses process and machine boundaries)::

    {"number": 3, "chain": [{"plugin": "int_quant", "options": {"bits": 4}}], "model": "m.onnx",
     "data": "eval.npz" | None, "input_shapes": {}, "seed": 0, "gates": ["cosine>=0.99"],
     "workdir": "/tmp/...", "keep": True}

The result: ``{"status": "ok"|"failed"|"timeout"|"invalid", "error": str|None, "metrics": {...},
"constraints": [float per non-timing gate, <= 0 when met], "gates_passed": bool, "files": [paths]}``.
Fidelity is always judged on the evaluation part of the data (``split_calibration``); methods that
calibrate get the calibration part from ``shrink`` as usual.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import signal
import time
import traceback
from pathlib import Path
from typing import Any

from onnxshrink.errors import InvalidModelError, UsageError, one_line
from onnxshrink.ir.io import load_model
from onnxshrink.plugin.method import PluginSpec
from onnxshrink.run.recipe import Recipe
from onnxshrink.run.shrink import shrink
from onnxshrink.validate import validate
from onnxshrink.validate.data import load_feeds, split_calibration
from onnxshrink.validate.gate import METRICS, evaluate_gates, parse_gate

_TAIL = 400


def timing_free_checks(gates: list[str]) -> list:
    """The parsed gate checks a trial can judge (everything but latency, which is re-timed later)."""
    return [c for c in map(parse_gate, gates) if not METRICS[c.metric].per_provider]


def constraint(check: dict[str, Any]) -> float:
    """optuna's convention: <= 0 when the check passed, > 0 (how far off) when it failed."""
    value, threshold = check.get("value"), check["threshold"]
    if not isinstance(value, (int, float)) or value != value:
        return 1.0
    diff = value - threshold if check["op"] in ("<=", "<") else threshold - value
    return min(diff, 0.0) if check["passed"] else max(diff, 1e-9)


def candidate_path(spec: dict[str, Any]) -> Path:
    return Path(spec["workdir"]) / f"trial_{spec['number']}" / "candidate.onnx"


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one trial in this process (no isolation): shrink, validate size and fidelity, judge."""
    output = candidate_path(spec)
    output.parent.mkdir(parents=True, exist_ok=True)
    job = Recipe(
        model=Path(spec["model"]),
        output=output,
        seed=spec["seed"],
        steps=[PluginSpec(s["plugin"], dict(s["options"])) for s in spec["chain"]],
        data_path=Path(spec["data"]) if spec.get("data") else None,
        input_shapes={k: tuple(v) for k, v in (spec.get("input_shapes") or {}).items()},
        validate=False,
    )
    try:
        report = shrink(job)
    except (UsageError, InvalidModelError) as exc:
        return _result("invalid", exc.message)
    model = load_model(spec["model"], load_external=False).model
    dataset = load_feeds(spec.get("data"), model, input_shapes=job.input_shapes or None, seed=spec["seed"])
    evaluation = split_calibration(dataset)[1]
    validation = validate(spec["model"], output, evaluation, measure_latency=False, threads=1)
    size, fidelity = validation["size"], validation["fidelity"]
    metrics = {
        "size_ratio": size["size_ratio"],
        "file_bytes": size["candidate"]["file_bytes"],
        "cosine": fidelity.get("cosine"),
        "latency_ratio": None,
    }
    if fidelity["status"] != "ok":
        return _result("invalid", fidelity.get("error") or "the candidate could not be compared", metrics)
    checks = timing_free_checks(spec["gates"])
    gate = evaluate_gates(checks, {"validation": validation})
    files = [str(p) for p in report["output"]["files"]]
    return {
        "status": "ok",
        "error": None,
        "metrics": metrics,
        "fidelity": {k: fidelity.get(k) for k in ("cosine", "max_abs_error", "rel_error", "top1_agreement")},
        "gate_checks": gate["checks"],
        "constraints": [constraint(c) for c in gate["checks"]],
        "gates_passed": gate["passed"],
        "files": files,
    }


def _result(status: str, error: str | None, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "status": status,
        "error": error,
        "metrics": metrics,
        "constraints": None,
        "gates_passed": False,
        "files": [],
    }


# ----------------------------------------------------------------------------------- isolation


def _child(spec: dict[str, Any], memory_bytes: int | None, conn: Any, log_path: str) -> None:
    """The child process: no Ctrl-C (the parent decides), a memory ceiling, output to a log file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    try:
        result = run_trial(spec)
    except MemoryError:
        result = _result("failed", f"out of memory (limit {memory_bytes} bytes of address space)")
    except Exception as exc:  # noqa: BLE001 - every failure is a recorded trial
        traceback.print_exc()
        result = _result("failed", f"{type(exc).__name__}: {one_line(exc)}")
    conn.send(result)
    conn.close()


class Running:
    """A trial running in a spawned child process."""

    def __init__(self, spec: dict[str, Any], timeout_s: float, memory_bytes: int | None):
        self.spec, self.timeout_s = spec, timeout_s
        folder = candidate_path(spec).parent
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / "trial.log"
        ctx = multiprocessing.get_context("spawn")
        self._recv, send = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_child, args=(spec, memory_bytes, send, str(self.log_path)), daemon=True)
        self.started = time.monotonic()
        self.process.start()
        send.close()
        self.result: dict[str, Any] | None = None

    @property
    def deadline(self) -> float:
        return self.started + self.timeout_s

    def poll(self) -> bool:
        """True when finished (result set); kills the child at its deadline."""
        if self.result is not None:
            return True
        if self._recv.poll():
            try:
                self.result = self._recv.recv()
            except (EOFError, OSError):
                self.result = _result("failed", self._crash_message())
        elif not self.process.is_alive():
            self.result = _result("failed", self._crash_message())
        elif time.monotonic() > self.deadline:
            self.kill()
            self.result = _result("timeout", f"no result within {self.timeout_s:.0f} s; the trial was stopped")
        if self.result is not None:
            self.process.join(timeout=5)
            self.result["seconds"] = round(time.monotonic() - self.started, 3)
            return True
        return False

    def _crash_message(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        tail = ""
        try:
            text = self.log_path.read_text(errors="replace").strip()
            tail = " ".join(text.split())[-_TAIL:]
        except OSError:
            pass
        return f"trial process crashed ({how})" + (f": {tail}" if tail else "")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


def run_isolated(spec: dict[str, Any], timeout_s: float, memory_bytes: int | None) -> dict[str, Any]:
    """Run one trial in a child process and wait for it (a crash or timeout is a result, never an exception)."""
    running = Running(spec, timeout_s, memory_bytes)
    try:
        while not running.poll():
            time.sleep(0.05)
    finally:
        running.kill()
    return running.result


def discard(spec: dict[str, Any]) -> None:
    """Remove a trial's candidate folder."""
    shutil.rmtree(candidate_path(spec).parent, ignore_errors=True)
