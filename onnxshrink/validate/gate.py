"""Release gates: thresholds on the numbers ``validate`` measured, turned into a verdict.

Measuring is separate from judging: this module never runs a model. It reads the report that the
run produced (see docs/report.md) and compares metrics to thresholds.

A gate expression is ``METRIC[SELECTOR] OP NUMBER``, e.g. ``size_ratio <= 0.5``,
``latency_ratio[cpu]<=1.0``, ``top1_agreement >= 0.99`` or ``cosine[sentence_embedding]>=0.99``.
The bracket means a provider for latency metrics (one of the known ``PROVIDERS``; without it,
``[cpu]``, the one provider that is always measured) and an output name for fidelity metrics
(without it: the worst over every output and every feed). Size and accuracy metrics take none.
Every expression is parsed (``parse_gate``) before anything runs, so a typo fails fast with exit
code 2.

Latency is judged by its 95% interval (``validation.latency.<ep>.ratio_ci``), not by the point
value: ``latency_ratio<=1.0`` fails only when the whole interval lies above 1.0, passes when it lies
below, and is ``inconclusive`` (passes, and says so) when it straddles the threshold, unless
``strict_latency`` asks for the far end of the interval to meet the threshold too.

``evaluate_gates`` returns the report's ``gate`` section; ``verdict_exit_code`` maps it to 0 / 1.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from onnxshrink.errors import ExitCode, UsageError

__all__ = [
    "DEFAULT_PROVIDER",
    "METRICS",
    "OPERATORS",
    "OUTPUT_METRICS",
    "PROVIDERS",
    "GateCheck",
    "Metric",
    "evaluate_check",
    "evaluate_gates",
    "format_number",
    "interval_verdict",
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
    per_output: bool = False


# Every metric a gate can test: name → (report key, meaning). docs/gate.md mirrors this table
# (tests/test_gate.py checks that it does).
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "size_ratio",
            "validation.size.size_ratio",
            "candidate / baseline bytes on disk (the .onnx plus its external data)",
        ),
        Metric("params_ratio", "validation.size.params_ratio", "candidate / baseline stored parameter count"),
        Metric("nonzeros_ratio", "validation.size.nonzeros_ratio", "candidate / baseline count of non-zero parameters"),
        Metric(
            "compressed_ratio",
            "validation.size.compressed_ratio",
            "candidate / baseline zlib-compressed size of the weights",
        ),
        Metric(
            "latency_ratio",
            "validation.latency.<ep>.ratio",
            "candidate / baseline latency on that provider (median of paired ratios, < 1 is faster), judged by its "
            "95% interval ratio_ci",
            per_provider=True,
        ),
        Metric(
            "latency_ms",
            "validation.latency.<ep>.candidate.median_ms",
            "candidate median latency on that provider, in milliseconds, judged by its 95% interval median_ci_ms",
            per_provider=True,
        ),
        Metric(
            "cosine",
            "validation.fidelity.cosine",
            "cosine similarity of candidate vs baseline outputs, per feed; the worst feed of the worst output (or of "
            "[output])",
            per_output=True,
        ),
        Metric(
            "cosine_mean",
            "validation.fidelity.cosine_mean",
            "cosine similarity averaged over feeds; the worst output (or [output])",
            per_output=True,
        ),
        Metric(
            "max_abs_error",
            "validation.fidelity.max_abs_error",
            "largest absolute difference between candidate and baseline outputs (worst output, or [output])",
            per_output=True,
        ),
        Metric(
            "rel_error",
            "validation.fidelity.rel_error",
            "relative L2 error ||c - b|| / max(||b||, floor), per feed; the worst feed of the worst output (or "
            "[output])",
            per_output=True,
        ),
        Metric(
            "snr_db",
            "validation.fidelity.snr_db",
            "signal-to-noise ratio 10 log10(||b||^2 / ||c - b||^2) in dB, per feed; the worst (or [output])",
            per_output=True,
        ),
        Metric(
            "top1_agreement",
            "validation.fidelity.top1_agreement",
            "fraction of rows where candidate and baseline agree on the arg-max class (outputs shaped like class "
            "scores only; worst, or [output])",
            per_output=True,
        ),
        Metric(
            "accuracy",
            "validation.fidelity.accuracy.candidate",
            "candidate task accuracy against the labels in the data (0-1)",
        ),
        Metric(
            "accuracy_drop",
            "validation.fidelity.accuracy.drop",
            "baseline accuracy - candidate accuracy, as a fraction (0.01 = one point)",
        ),
    )
}

OUTPUT_METRICS: dict[str, str] = {
    "cosine": "cosine_worst",
    "cosine_mean": "cosine_mean",
    "max_abs_error": "max_abs_error",
    "rel_error": "rel_error",
    "snr_db": "snr_db",
    "top1_agreement": "top1_agreement",
}
"""Fidelity metric → the key it reads in ``validation.fidelity.outputs[<name>]`` when the gate names an output."""

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
    \s*(?:\[(?P<selector>[^\]]*)\])?
    \s*(?P<op>[<>=!]+)?
    \s*(?P<number>.*?)\s*$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class GateCheck:
    """One parsed gate expression. ``provider`` is None for metrics that take none; ``output`` names
    the output a fidelity metric reads (None: the worst over outputs)."""

    expr: str
    metric: str
    provider: str | None
    op: str
    threshold: float
    output: str | None = None

    def compare(self, value: float) -> bool:
        """True when ``value OP threshold`` holds; NaN never passes."""
        if math.isnan(value):
            return False
        return OPERATORS[self.op](value, self.threshold)

    @property
    def label(self) -> str:
        """The canonical spelling, e.g. ``latency_ratio[cpu] <= 1``."""
        selector = self.provider or self.output
        where = f"[{selector}]" if selector else ""
        return f"{self.metric}{where} {self.op} {format_number(self.threshold)}"


def _known_metrics() -> str:
    return ", ".join(METRICS)


def parse_gate(expr: str) -> GateCheck:
    """Parse ``METRIC[SELECTOR] OP NUMBER``; raise UsageError naming the expression on any mistake."""
    if not isinstance(expr, str):
        raise UsageError(f"gate {expr!r}: expected a string like 'size_ratio<=0.5'")
    text = expr.strip()
    usage = (
        "use METRIC[SELECTOR] OP NUMBER, e.g. 'size_ratio<=0.5', 'latency_ratio[cpu]<=1.0' or 'cosine[logits]>=0.99'"
    )
    if not text:
        raise UsageError(f"empty gate expression; {usage}")
    match = _EXPR.match(text)
    if not match:
        raise UsageError(f"gate {text!r}: cannot parse; {usage}")
    metric, selector, op, number = match.group("metric", "selector", "op", "number")

    spec = METRICS.get(metric)
    if spec is None:
        raise UsageError(f"gate {text!r}: unknown metric {metric!r}; known metrics: {_known_metrics()}")

    provider = output = None
    if selector is not None:
        if spec.per_provider:
            provider = selector.strip().lower()
            if provider not in PROVIDERS:
                raise UsageError(
                    f"gate {text!r}: unknown provider {provider!r}; known providers: {', '.join(PROVIDERS)}"
                )
        elif spec.per_output:
            output = selector.strip()
            if not output:
                raise UsageError(
                    f"gate {text!r}: empty [output]; name an output of the model, or drop the brackets for the worst "
                    "output"
                )
        else:
            per_provider = ", ".join(m.name for m in METRICS.values() if m.per_provider)
            per_output = ", ".join(m.name for m in METRICS.values() if m.per_output)
            raise UsageError(
                f"gate {text!r}: metric {metric!r} takes no [selector]; [provider] goes with {per_provider}, "
                f"[output] with {per_output}"
            )
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
    return GateCheck(expr=text, metric=metric, provider=provider, op=op, threshold=threshold, output=output)


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
    if fidelity.get("status") == "failed":
        raise _Missing(f"fidelity could not be measured: {fidelity.get('error') or 'no error given'}")
    return fidelity


def _accuracy(report: Mapping[str, Any]) -> Mapping[str, Any]:
    fidelity = _fidelity(report)
    accuracy = fidelity.get("accuracy")
    if isinstance(accuracy, Mapping):
        return accuracy
    if fidelity.get("labels") is True:
        why = "; ".join(w for w in fidelity.get("warnings") or [] if "label" in w) or "no output holds class scores"
        raise _Missing(f"the data has labels but accuracy was not computed: {why}")
    raise _Missing("no labels in the data: accuracy needs a 'labels' array in the --data file")


def _output_value(check: GateCheck, fidelity: Mapping[str, Any]) -> Any:
    outputs = fidelity.get("outputs")
    outputs = outputs if isinstance(outputs, Mapping) else {}
    entry = outputs.get(check.output)
    if not isinstance(entry, Mapping):
        raise _Missing(
            f"the model has no output {check.output!r}; its outputs: {', '.join(map(repr, outputs)) or 'none'}"
        )
    key = OUTPUT_METRICS[check.metric]
    value = entry.get(key, entry.get("cosine") if key == "cosine_worst" else None)
    if value is None:
        if check.metric == "top1_agreement":
            raise _Missing(
                f"output {check.output!r} is not shaped like class scores "
                f"({entry.get('class_scores_rule') or 'see docs/report.md'}), so it has no top-1"
            )
        raise _Missing(
            f"{check.metric} is not defined for output {check.output!r} (dtype {entry.get('dtype')}: compare it with "
            "exact_match)"
        )
    return value


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
    if metric in OUTPUT_METRICS:
        fidelity = _fidelity(report)
        if check.output is not None:
            return _output_value(check, fidelity), None
        if metric not in fidelity:
            raise _Missing(f"the report has no validation.fidelity.{metric}")
        value = fidelity[metric]
        if value is None and metric == "top1_agreement":
            raise _Missing(
                "top1_agreement is null: no output is shaped like class scores (see the rule in docs/report.md), so "
                "there is no top-1 to compare"
            )
        if value is None and metric in ("cosine", "cosine_mean", "rel_error", "snr_db"):
            raise _Missing(
                f"{metric} is null: no output is a float tensor (compare integer outputs with max_abs_error)"
            )
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


def _result(
    check: GateCheck, *, value: Any, passed: bool, status: str, reason: str, interval: list[float] | None = None
) -> dict[str, Any]:
    result = {
        "expr": check.expr,
        "metric": check.metric,
        "provider": check.provider,
        "output": check.output,
        "op": check.op,
        "threshold": check.threshold,
        "value": value,
        "passed": passed,
        "status": status,
        "reason": reason,
    }
    if interval is not None:
        result["interval"] = interval
    return result


def _interval(check: GateCheck, report: Mapping[str, Any]) -> list[float] | None:
    """The 95% interval of a latency metric's value, when the report has one."""
    if check.metric not in ("latency_ratio", "latency_ms"):
        return None
    entry = _latency_entry(check, report)
    ci = entry.get("ratio_ci") if check.metric == "latency_ratio" else _get(entry.get("candidate"), "median_ci_ms")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_is_number(v) and math.isfinite(v) for v in ci):
        return [float(ci[0]), float(ci[1])]
    return None


def interval_verdict(op: str, threshold: float, lo: float, hi: float, *, strict: bool = False) -> str:
    """``pass``, ``fail`` or ``inconclusive`` for an interval ``[lo, hi]`` against ``OP threshold``.

    ``fail`` only when the whole interval misses the threshold; ``pass`` when the whole interval meets
    it; otherwise ``inconclusive``, which ``strict`` turns into ``fail``. ``==`` is never inconclusive
    (it passes when the threshold lies inside the interval)."""
    compare = OPERATORS[op]
    if op == "==":
        return "pass" if lo <= threshold <= hi else "fail"
    near, far = (lo, hi) if op in ("<=", "<") else (hi, lo)
    if not compare(near, threshold):
        return "fail"
    if compare(far, threshold):
        return "pass"
    return "fail" if strict else "inconclusive"


def evaluate_check(
    check: GateCheck, report: Mapping[str, Any], *, allow_unavailable: bool = False, strict_latency: bool = False
) -> dict[str, Any]:
    """Evaluate one check against a report; the result is one entry of ``gate.checks``.

    Latency checks with an interval in the report are judged by ``interval_verdict``
    (``strict_latency``: the whole interval must meet the threshold)."""
    unavailable = _unavailable_reason(check, report)
    if unavailable is not None:
        if allow_unavailable:
            return _result(
                check,
                value=None,
                passed=True,
                status="unavailable",
                reason=f"{unavailable}; not checked, allowed by --allow-unavailable",
            )
        return _result(
            check,
            value=None,
            passed=False,
            status="fail",
            reason=f"{unavailable} (pass --allow-unavailable to accept this)",
        )

    try:
        value, note = _value(check, report)
    except _Missing as exc:
        return _result(check, value=None, passed=False, status="missing", reason=str(exc))

    if value is None:
        return _result(
            check,
            value=None,
            passed=False,
            status="missing",
            reason=f"{check.metric} is null in the report; nothing to compare",
        )
    if not _is_number(value):
        return _result(
            check, value=None, passed=False, status="missing", reason=f"{check.metric} is {value!r}, not a number"
        )
    if isinstance(value, float) and math.isnan(value):
        return _result(
            check, value=value, passed=False, status="fail", reason=f"{check.metric} is NaN; NaN never passes"
        )

    shown, wanted = format_number(value), format_number(check.threshold)
    interval = _interval(check, report)
    if interval is not None:
        return _interval_result(check, value, interval, note, strict_latency)
    if check.compare(value):
        reason = f"{shown} {check.op} {wanted}"
        passed, status = True, "pass"
    else:
        reason = f"{shown} {_NEGATED[check.op]} {wanted} (needs {check.op} {wanted})"
        passed, status = False, "fail"
    if note:
        reason += f"; note: {note}"
    return _result(check, value=value, passed=passed, status=status, reason=reason)


def _interval_result(
    check: GateCheck, value: float, interval: list[float], note: str | None, strict: bool
) -> dict[str, Any]:
    lo, hi = interval
    verdict = interval_verdict(check.op, check.threshold, lo, hi, strict=strict)
    wanted = format_number(check.threshold)
    measured = f"{_short(value)}, 95% interval [{_short(lo)}, {_short(hi)}]"
    if verdict == "pass":
        reason = f"{measured} {check.op} {wanted}"
    elif verdict == "inconclusive":
        reason = f"inconclusive: {measured} straddles {wanted}; passes (--strict-latency would fail it)"
    elif check.op != "==" and OPERATORS[check.op](lo if check.op in ("<=", "<") else hi, check.threshold):
        reason = f"{measured} straddles {wanted}; --strict-latency needs the whole interval {check.op} {wanted}"
    else:
        reason = (
            f"{measured} {'lies entirely ' + _NEGATED[check.op] if check.op != '==' else 'excludes'} {wanted} "
            f"(needs {check.op} {wanted})"
        )
    if note:
        reason += f"; note: {note}"
    return _result(check, value=value, passed=verdict != "fail", status=verdict, reason=reason, interval=interval)


def _short(value: float) -> str:
    return f"{value:.4g}"


def evaluate_gates(
    checks: Iterable[GateCheck],
    report: Mapping[str, Any],
    *,
    allow_unavailable: bool = False,
    strict_latency: bool = False,
) -> dict[str, Any]:
    """The report's ``gate`` section: every check with its value, status and reason, and the verdict.

    ``status`` is ``pass``, ``fail`` (compared and failed, NaN, or an unavailable/failed provider
    without ``allow_unavailable``), ``inconclusive`` (a latency interval straddles the threshold;
    ``passed`` is true unless ``strict_latency``, then the status is ``fail``), ``unavailable``
    (provider not timed, accepted because ``allow_unavailable``; ``passed`` is true and ``reason`` says
    so) or ``missing`` (the report holds no value: validation skipped, no labels, a null value, with
    the reason). The gate passes when every check passed.
    """
    results = [
        evaluate_check(c, report, allow_unavailable=allow_unavailable, strict_latency=strict_latency) for c in checks
    ]
    return {
        "passed": all(r["passed"] for r in results),
        "allow_unavailable": bool(allow_unavailable),
        "strict_latency": bool(strict_latency),
        "checks": results,
    }


def verdict_exit_code(gate_section: Mapping[str, Any] | None) -> ExitCode:
    """``ExitCode.OK`` (0) when every check passed (or there is no gate), ``GATE_FAILED`` (1) when one failed."""
    if not gate_section:
        return ExitCode.OK
    checks = gate_section.get("checks") or []
    ok = gate_section.get("passed") is True and all(c.get("passed") is True for c in checks)
    return ExitCode.OK if ok else ExitCode.GATE_FAILED
