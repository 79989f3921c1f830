"""The tune report (schema ``onnxshrink.tune/1``), the Pareto fronts and the choice.

Report keys (at least)::

    {"schema": "onnxshrink.tune/1", "model": {"path", "file_bytes"}, "gates": [str], "objective": "size",
     "trials": [{"number", "chain": [{"plugin", "options"}], "status": "ok"|"failed"|"timeout"|"invalid",
                 "error", "passed", "metrics": {"size_ratio", "file_bytes", "cosine",
                 "latency_ratio": {ep: ratio} | None}, "seconds"}],
     "pareto": [trial numbers], "chosen": trial number | None, "seconds": float}

Extra keys: per trial ``params`` (the optimizer's parameters, replayed by ``--resume``), ``timed``,
``same_as`` (the earlier trial whose configuration this one repeats: its result was reused, no process ran),
``latency_passes`` (each timing of a re-timed candidate, when its first was too noisy to trust),
``gate_checks`` (every check with value and reason), ``fidelity``; at the top ``seed``, ``backend``,
``space``, ``budget``, ``interrupted``, ``output``, ``recipe`` and ``tool``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnxshrink.errors import UsageError

SCHEMA = "onnxshrink.tune/1"
STATUSES = ("ok", "failed", "timeout", "invalid")


def trial_entry(number: int, chain: list[Any], params: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    metrics = result.get("metrics")
    return {
        "number": number,
        "chain": [{"plugin": s.plugin, "options": dict(s.options)} for s in chain],
        "params": params,
        "status": result["status"],
        "error": result.get("error"),
        "passed": False,
        "gates_passed_untimed": bool(result.get("gates_passed")),
        "metrics": dict(metrics) if metrics else None,
        "fidelity": result.get("fidelity"),
        "gate_checks": result.get("gate_checks") or [],
        "timed": False,
        "seconds": float(result.get("seconds") or 0.0),
    }


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto(points: dict[int, tuple[float, ...]]) -> list[int]:
    """Numbers of the points no other point dominates (all coordinates minimized), in number order."""
    return sorted(n for n, p in points.items() if not any(dominates(q, p) for m, q in points.items() if m != n))


def _cosine_loss(trial: dict[str, Any]) -> float:
    cosine = trial["metrics"].get("cosine")
    return 1.0 - cosine if cosine is not None else 1.0


def untimed_front(trials: list[dict[str, Any]]) -> list[int]:
    """Among trials that met every gate but latency: the front on (file bytes, 1 - worst cosine)."""
    points = {t["number"]: (t["metrics"]["file_bytes"], _cosine_loss(t)) for t in trials if _candidate(t)}
    return pareto(points)


def _candidate(trial: dict[str, Any]) -> bool:
    """Met every gate but latency, and is no repeat of an earlier trial (``same_as``: its model is that trial's)."""
    return trial["status"] == "ok" and bool(trial["gates_passed_untimed"]) and trial.get("same_as") is None


def to_time(trials: list[dict[str, Any]], limit: int) -> list[int]:
    """The candidates to re-time, in order: the untimed front by size, then other gate-passing trials by size."""
    by_number = {t["number"]: t for t in trials}
    front = sorted(untimed_front(trials), key=lambda n: (by_number[n]["metrics"]["file_bytes"], n))
    rest = sorted(
        (t["number"] for t in trials if _candidate(t) and t["number"] not in front),
        key=lambda n: (by_number[n]["metrics"]["file_bytes"], n),
    )
    return (front + rest)[:limit]


def final_front(trials: list[dict[str, Any]], providers: list[str]) -> list[int]:
    """Among timed trials: the front on (file bytes, latency ratio per provider, 1 - worst cosine)."""
    points = {}
    for t in trials:
        if not t["timed"]:
            continue
        ratios = t["metrics"].get("latency_ratio") or {}
        points[t["number"]] = (
            t["metrics"]["file_bytes"],
            *(ratios.get(ep) if ratios.get(ep) is not None else float("inf") for ep in providers),
            _cosine_loss(t),
        )
    return pareto(points)


def choose(trials: list[dict[str, Any]]) -> int | None:
    """The smallest file among trials that passed every gate (ties: higher cosine, then lower number)."""
    passed = [t for t in trials if t["passed"]]
    if not passed:
        return None
    return min(passed, key=lambda t: (t["metrics"]["file_bytes"], _cosine_loss(t), t["number"]))["number"]


def write_json(report: dict[str, Any], path: Path) -> None:
    """Atomically: a temporary file beside the target, then os.replace."""
    import os
    import tempfile

    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_resume(path: Path) -> dict[str, Any]:
    """An earlier tune report, checked enough to replay its trials (UsageError otherwise)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--resume {path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume {path}: not a readable JSON report: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("trials"), list):
        raise UsageError(f"--resume {path}: not a tune report (schema {SCHEMA!r} with a trials list)")
    for i, t in enumerate(data["trials"]):
        if not isinstance(t, dict) or not isinstance(t.get("params"), dict) or t.get("status") not in STATUSES:
            raise UsageError(f"--resume {path}: trials[{i}] lacks params or a valid status")
    return data
