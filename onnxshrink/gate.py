"""Release gates: thresholds on the numbers ``validate`` measured, turned into a verdict.

Measuring is separate from judging: this module never runs a model. It reads the report that the
run produced (see docs/report.md) and compares metrics to thresholds.

A gate expression is ``METRIC[PROVIDER] OP NUMBER``, e.g. ``size_ratio <= 0.5``,
``latency_ratio[cpu]<=1.0`` or ``top1_agreement >= 0.99``. Latency metrics are per execution
provider; without ``[provider]`` they mean ``[cpu]`` (the one provider that is always measured).
Other metrics take no provider. Every expression is parsed (``parse_gate``) before anything runs,
so a typo fails fast with exit code 2.

``evaluate_gates`` returns the report's ``gate`` section; ``verdict_exit_code`` maps it to 0 / 1.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

__all__ = [
    "DEFAULT_PROVIDER",
    "METRICS",
    "OPERATORS",
    "PROVIDERS",
    "GateCheck",
    "Metric",
    "evaluate_check",
    "evaluate_gates",
    "format_number",
    "parse_gate",
    "parse_gates",
    "verdict_exit_code",
]

PROVIDERS: tuple[str, ...] = ("cpu", "cuda", "tensorrt")
"""Execution providers a latency metric can name (the keys of ``validation.latency``)."""

DEFAULT_PROVIDER = "cpu"
"""The provider a latency metric means when the expression names none."""


@dataclass(frozen=True)
class Metric:
    """One gateable number: where it lives in the report and what it means."""

    name: str
    source: str  # the report key, for documentation and messages
    meaning: str
    per_provider: bool = False


# Every metric a gate can test: name → (report key, meaning). docs/gate.md mirrors this table
# (tests/test_gate.py checks that it does).
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("size_ratio", "validation.size.size_ratio", "candidate / baseline bytes on disk (the .onnx plus its external data)"),
        Metric("params_ratio", "validation.size.params_ratio", "candidate / baseline stored parameter count"),
        Metric("nonzeros_ratio", "validation.size.nonzeros_ratio", "candidate / baseline count of non-zero parameters"),
        Metric("compressed_ratio", "validation.size.compressed_ratio", "candidate / baseline zlib-compressed size of the weights"),
        Metric("latency_ratio", "validation.latency.<ep>.ratio", "candidate / baseline median latency on that provider (< 1 is faster)", per_provider=True),
        Metric("latency_ms", "validation.latency.<ep>.candidate.median_ms", "candidate median latency on that provider, in milliseconds", per_provider=True),
        Metric("cosine", "validation.fidelity.cosine", "cosine similarity of candidate vs baseline outputs (worst output)"),
        Metric("max_abs_error", "validation.fidelity.max_abs_error", "largest absolute difference between candidate and baseline outputs (worst output)"),
        Metric("rel_error", "validation.fidelity.rel_error", "relative L2 error of candidate vs baseline outputs (worst output)"),
        Metric("top1_agreement", "validation.fidelity.top1_agreement", "fraction of samples where candidate and baseline agree on the arg-max class (class-like outputs only)"),
        Metric("accuracy", "validation.fidelity.accuracy.candidate", "candidate task accuracy against the labels in the data (0-1)"),
        Metric("accuracy_drop", "validation.fidelity.accuracy.drop", "baseline accuracy - candidate accuracy, as a fraction (0.01 = one point)"),
    )
}

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}

# The opposite operator, for "0.62 > 0.5" style failure reasons.
_NEGATED = {"<=": ">", "<": ">=", ">=": "<", ">": "<=", "==": "!="}

# Size metrics → the size key they compare (for the fallback when validation was skipped).
_SIZE_KEYS = {
    "size_ratio": "file_bytes",
    "params_ratio": "params",
    "nonzeros_ratio": "nonzeros",
    "compressed_ratio": "compressed_bytes",
}

_EXPR = re.compile(
    r"""^\s*
    (?P<metric>[A-Za-z_][A-Za-z0-9_]*)
    \s*(?:\[(?P<provider>[^\]]*)\])?
    \s*(?P<op>[<>=!]+)?
    \s*(?P<number>.*?)\s*$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class GateCheck:
    """One parsed gate expression. ``provider`` is None for metrics that take none."""

    expr: str
    metric: str
    provider: str | None
    op: str
    threshold: float

    def compare(self, value: float) -> bool:
        """True when ``value OP threshold`` holds; NaN never passes."""
        if math.isnan(value):
            return False
        return OPERATORS[self.op](value, self.threshold)

    @property
    def label(self) -> str:
        """The canonical spelling, e.g. ``latency_ratio[cpu] <= 1``."""
        where = f"[{self.provider}]" if self.provider else ""
        return f"{self.metric}{where} {self.op} {format_number(self.threshold)}"


def _known_metrics() -> str:
    return ", ".join(METRICS)


def parse_gate(expr: str) -> GateCheck:
    """Parse ``METRIC[PROVIDER] OP NUMBER``; raise UsageError naming the expression on any mistake."""
    if not isinstance(expr, str):
        raise UsageError(f"gate {expr!r}: expected a string like 'size_ratio<=0.5'")
    text = expr.strip()
    usage = "use METRIC[PROVIDER] OP NUMBER, e.g. 'size_ratio<=0.5' or 'latency_ratio[cpu]<=1.0'"
    if not text:
        raise UsageError(f"empty gate expression; {usage}")
    match = _EXPR.match(text)
    if not match:
        raise UsageError(f"gate {text!r}: cannot parse; {usage}")
    metric, provider, op, number = match.group("metric", "provider", "op", "number")

    spec = METRICS.get(metric)
    if spec is None:
        raise UsageError(f"gate {text!r}: unknown metric {metric!r}; known metrics: {_known_metrics()}")

    if provider is not None:
        provider = provider.strip().lower()
        if not spec.per_provider:
            per_provider = ", ".join(m.name for m in METRICS.values() if m.per_provider)
            raise UsageError(f"gate {text!r}: metric {metric!r} takes no [provider]; only {per_provider} do")
        if provider not in PROVIDERS:
            raise UsageError(f"gate {text!r}: unknown provider {provider!r}; known providers: {', '.join(PROVIDERS)}")
    elif spec.per_provider:
        provider = DEFAULT_PROVIDER

    if op is None:
        raise UsageError(f"gate {text!r}: missing comparison operator; use one of {', '.join(OPERATORS)}")
    if op not in OPERATORS:
        raise UsageError(f"gate {text!r}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}")

    if not number:
        raise UsageError(f"gate {text!r}: missing the threshold number after {op!r}")
    try:
        threshold = float(number)
    except ValueError:
        raise UsageError(f"gate {text!r}: threshold {number!r} is not a number") from None
    if not math.isfinite(threshold):
        raise UsageError(f"gate {text!r}: threshold {number!r} must be a finite number")
    return GateCheck(expr=text, metric=metric, provider=provider, op=op, threshold=threshold)


def parse_gates(exprs: Iterable[str]) -> list[GateCheck]:
    """Parse several expressions (all of them, before anything runs)."""
    return [parse_gate(e) for e in exprs]


def format_number(value: Any) -> str:
    """A short, round-trip-safe spelling of a measured value or threshold."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        short = f"{value:.10g}"
        return short if float(short) == value else repr(value)
    return str(value)


# --------------------------------------------------------------------------- evaluation


class _Missing(Exception):
    """The report holds no value for a metric; the message says why."""


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, Mapping) else None


def _validation(report: Mapping[str, Any]) -> Mapping[str, Any]:
    validation = report.get("validation")
    if not isinstance(validation, Mapping):
        raise _Missing("validation was skipped (no 'validation' section in the report; drop --no-validate)")
    return validation


def _size_value(check: GateCheck, report: Mapping[str, Any]) -> Any:
    size = _get(report.get("validation"), "size")
    if isinstance(size, Mapping) and check.metric in size:
        return size[check.metric]
    # Size is reported even without validation: fall back to output.size / input.size.
    key = _SIZE_KEYS[check.metric]
    base = _get(_get(report.get("input"), "size"), key)
    cand = _get(_get(report.get("output"), "size"), key)
    if _is_number(base) and _is_number(cand):
        if base == 0:
            raise _Missing(f"baseline {key} is 0; the ratio is undefined")
        return cand / base
    if not isinstance(report.get("validation"), Mapping):
        raise _Missing("validation was skipped and the report has no input/output sizes")
    raise _Missing(f"the report has no validation.size.{check.metric}")


def _latency_entry(check: GateCheck, report: Mapping[str, Any]) -> Mapping[str, Any]:
    latency = _validation(report).get("latency")
    if not isinstance(latency, Mapping):
        raise _Missing("latency was not measured (no 'validation.latency' section)")
    entry = latency.get(check.provider)
    if not isinstance(entry, Mapping):
        measured = ", ".join(latency) or "none"
        raise _Missing(f"provider {check.provider!r} was not measured (measured: {measured}); add it to --providers")
    return entry


def _fidelity(report: Mapping[str, Any]) -> Mapping[str, Any]:
    fidelity = _validation(report).get("fidelity")
    if not isinstance(fidelity, Mapping):
        raise _Missing("fidelity was not measured (no 'validation.fidelity' section)")
    return fidelity


def _accuracy(report: Mapping[str, Any]) -> Mapping[str, Any]:
    accuracy = _fidelity(report).get("accuracy")
    if not isinstance(accuracy, Mapping):
        raise _Missing("no labels in the data: accuracy needs a 'labels' array in the --data file")
    return accuracy


def _value(check: GateCheck, report: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The measured value and an optional note (e.g. a latency spread warning)."""
    metric = check.metric
    if metric in _SIZE_KEYS:
        return _size_value(check, report), None
    if metric in ("latency_ratio", "latency_ms"):
        entry = _latency_entry(check, report)
        note = entry.get("warning") or None
        if metric == "latency_ratio":
            return entry.get("ratio"), note
        return _get(entry.get("candidate"), "median_ms"), note
    if metric in ("cosine", "max_abs_error", "rel_error", "top1_agreement"):
        fidelity = _fidelity(report)
        if metric not in fidelity:
            raise _Missing(f"the report has no validation.fidelity.{metric}")
        value = fidelity[metric]
        if value is None and metric == "top1_agreement":
            raise _Missing("top1_agreement is null: no output looks like class scores, so there is no top-1 to compare")
        return value, None
    if metric == "accuracy":
        return _accuracy(report).get("candidate"), None
    if metric == "accuracy_drop":
        return _accuracy(report).get("drop"), None
    raise _Missing(f"unknown metric {metric!r}")  # unreachable for parsed checks


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unavailable_reason(check: GateCheck, report: Mapping[str, Any]) -> str | None:
    """Why the check's provider could not be timed, or None when it was (or takes no provider)."""
    if not METRICS[check.metric].per_provider:
        return None
    try:
        entry = _latency_entry(check, report)
    except _Missing:
        return None
    status = entry.get("status", "ok")
    if status == "unavailable":
        return f"provider {check.provider} is unavailable: {entry.get('reason') or 'no reason given'}"
    if status == "failed":
        return f"provider {check.provider} failed: {entry.get('error') or entry.get('reason') or 'no error given'}"
    if status != "ok":
        return f"provider {check.provider} has status {status!r}"
    return None


def _result(check: GateCheck, *, value: Any, passed: bool, status: str, reason: str) -> dict[str, Any]:
    return {
        "expr": check.expr,
        "metric": check.metric,
        "provider": check.provider,
        "op": check.op,
        "threshold": check.threshold,
        "value": value,
        "passed": passed,
        "status": status,
        "reason": reason,
    }


def evaluate_check(check: GateCheck, report: Mapping[str, Any], *, allow_unavailable: bool = False) -> dict[str, Any]:
    """Evaluate one check against a report; the result is one entry of ``gate.checks``."""
    unavailable = _unavailable_reason(check, report)
    if unavailable is not None:
        if allow_unavailable:
            return _result(check, value=None, passed=True, status="unavailable", reason=f"{unavailable}; not checked, allowed by --allow-unavailable")
        return _result(check, value=None, passed=False, status="fail", reason=f"{unavailable} (pass --allow-unavailable to accept this)")

    try:
        value, note = _value(check, report)
    except _Missing as exc:
        return _result(check, value=None, passed=False, status="missing", reason=str(exc))

    if value is None:
        return _result(check, value=None, passed=False, status="missing", reason=f"{check.metric} is null in the report; nothing to compare")
    if not _is_number(value):
        return _result(check, value=None, passed=False, status="missing", reason=f"{check.metric} is {value!r}, not a number")
    if isinstance(value, float) and math.isnan(value):
        return _result(check, value=value, passed=False, status="fail", reason=f"{check.metric} is NaN; NaN never passes")

    shown, wanted = format_number(value), format_number(check.threshold)
    if check.compare(value):
        reason = f"{shown} {check.op} {wanted}"
        passed, status = True, "pass"
    else:
        reason = f"{shown} {_NEGATED[check.op]} {wanted} (needs {check.op} {wanted})"
        passed, status = False, "fail"
    if note:
        reason += f"; note: {note}"
    return _result(check, value=value, passed=passed, status=status, reason=reason)


def evaluate_gates(checks: Iterable[GateCheck], report: Mapping[str, Any], *, allow_unavailable: bool = False) -> dict[str, Any]:
    """The report's ``gate`` section: every check with its value, status and reason, and the verdict.

    ``status`` is ``pass``, ``fail`` (compared and failed, NaN, or an unavailable/failed provider
    without ``allow_unavailable``), ``unavailable`` (provider not timed, accepted because
    ``allow_unavailable``; ``passed`` is true and ``reason`` says so) or ``missing`` (the report holds
    no value: validation skipped, no labels, a null value). The gate passes when every check passed.
    """
    results = [evaluate_check(c, report, allow_unavailable=allow_unavailable) for c in checks]
    return {
        "passed": all(r["passed"] for r in results),
        "allow_unavailable": bool(allow_unavailable),
        "checks": results,
    }


def verdict_exit_code(gate_section: Mapping[str, Any] | None) -> int:
    """0 when every check passed (or there is no gate), 1 when at least one failed."""
    if not gate_section:
        return 0
    checks = gate_section.get("checks") or []
    ok = gate_section.get("passed") is True and all(c.get("passed") is True for c in checks)
    return 0 if ok else 1
