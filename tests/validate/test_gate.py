"""Gate expressions: parsing, every metric and operator against a sample report, verdicts."""

from __future__ import annotations

import copy
import math
import re

import pytest

from onnxshrink.errors import ExitCode, UsageError
from onnxshrink.validate.gate import (
    DEFAULT_PROVIDER,
    METRICS,
    OPERATORS,
    PROVIDERS,
    GateCheck,
    evaluate_gates,
    format_number,
    parse_gate,
    verdict_exit_code,
)
from tests.support.files import ROOT
from tests.support.reports import sample_report

DOCS = ROOT / "docs"


def check(expr: str, report: dict | None = None, **kwargs) -> dict:
    section = evaluate_gates([parse_gate(expr)], sample_report() if report is None else report, **kwargs)
    assert len(section["checks"]) == 1
    return section["checks"][0]


# ------------------------------------------------------------------ every metric: pass, fail, boundary

# metric expression (with provider where needed), the value the sample report holds
METRIC_VALUES = {
    "size_ratio": 0.4,
    "params_ratio": 1.0,
    "nonzeros_ratio": 0.5,
    "compressed_ratio": 0.4,
    "latency_ratio[cpu]": 0.75,
    "latency_ms[cpu]": 1.5,
    "cosine": 0.9995,
    "cosine_mean": 0.9998,
    "max_abs_error": 0.02,
    "rel_error": 0.01,
    "snr_db": 40.0,
    "top1_agreement": 0.98,
    "accuracy": 0.88,
    "accuracy_drop": 0.02,
}


def test_metric_table_is_covered_by_these_tests():
    assert {re.sub(r"\[.*\]", "", k) for k in METRIC_VALUES} == set(METRICS)


@pytest.mark.parametrize("target,value", METRIC_VALUES.items())
def test_every_metric_reads_its_report_value(target, value):
    result = check(f"{target} <= 1000")
    assert result["value"] == value
    assert result["passed"] is True
    assert result["status"] == "pass"


@pytest.mark.parametrize("target,value", METRIC_VALUES.items())
def test_every_metric_fails_past_its_threshold(target, value):
    below = value / 2
    result = check(f"{target} <= {below!r}")
    assert result["passed"] is False
    assert result["status"] == "fail"
    assert result["value"] == value
    assert format_number(below) in result["reason"]


@pytest.mark.parametrize("target,value", METRIC_VALUES.items())
def test_every_metric_boundary_equality(target, value):
    for op, expected in (("<=", True), (">=", True), ("==", True), ("<", False), (">", False)):
        result = check(f"{target} {op} {value!r}")
        assert result["passed"] is expected, (target, op)


# ------------------------------------------------------------------ operators


@pytest.mark.parametrize(
    "expr,passed",
    [
        ("size_ratio <= 0.5", True),
        ("size_ratio <= 0.4", True),
        ("size_ratio <= 0.3", False),
        ("size_ratio < 0.5", True),
        ("size_ratio < 0.4", False),
        ("size_ratio >= 0.4", True),
        ("size_ratio >= 0.5", False),
        ("size_ratio > 0.3", True),
        ("size_ratio > 0.4", False),
        ("size_ratio == 0.4", True),
        ("size_ratio == 0.5", False),
    ],
)
def test_every_operator(expr, passed):
    result = check(expr)
    assert result["passed"] is passed
    assert result["status"] == ("pass" if passed else "fail")


def test_operators_are_exactly_the_documented_ones():
    assert list(OPERATORS) == ["<=", "<", ">=", ">", "=="]


@pytest.mark.parametrize(
    "expr",
    ["size_ratio<=0.5", "  size_ratio <= 0.5  ", "size_ratio\t<=\t0.5", "size_ratio<= 5e-1", "size_ratio <=+0.5"],
)
def test_whitespace_and_number_spellings(expr):
    parsed = parse_gate(expr)
    assert (parsed.metric, parsed.provider, parsed.op, parsed.threshold) == ("size_ratio", None, "<=", 0.5)
    assert parsed.expr == expr.strip()


def test_parse_gate_returns_a_check():
    parsed = parse_gate("latency_ratio[cuda] <= 1.0")
    assert parsed == GateCheck(
        expr="latency_ratio[cuda] <= 1.0", metric="latency_ratio", provider="cuda", op="<=", threshold=1.0
    )
    assert parsed.label == "latency_ratio[cuda] <= 1"
    assert parse_gate("latency_ms[ TensorRT ]<3").provider == "tensorrt"
    assert parse_gate("accuracy_drop <= -0.5").threshold == -0.5


# ------------------------------------------------------------------ providers


def test_latency_without_provider_means_cpu():
    assert DEFAULT_PROVIDER == "cpu"
    parsed = parse_gate("latency_ratio <= 1.0")
    assert parsed.provider == "cpu"
    result = check("latency_ratio <= 1.0")
    assert result["provider"] == "cpu" and result["value"] == 0.75 and result["passed"]


def test_per_provider_values_differ():
    cpu, cuda = check("latency_ratio[cpu] <= 1.0"), check("latency_ratio[cuda] <= 1.0")
    assert (cpu["value"], cpu["passed"]) == (0.75, True)
    assert (cuda["value"], cuda["passed"]) == (1.2, False)
    assert check("latency_ms[cuda] < 0.7")["value"] == 0.6
    assert check("latency_ms[cpu] < 0.7")["passed"] is False


def test_latency_spread_warning_is_noted_in_the_reason():
    assert "spread 30% is wide" in check("latency_ratio[cuda] <= 2")["reason"]


@pytest.mark.parametrize("metric", ["latency_ratio", "latency_ms"])
def test_unavailable_provider_fails_unless_allowed(metric):
    report = sample_report()
    report["validation"]["latency"]["cuda"] = {
        "status": "unavailable",
        "reason": "CUDAExecutionProvider is not in onnxruntime.get_available_providers()",
    }
    failed = evaluate_gates([parse_gate(f"{metric}[cuda] <= 1.0")], report)
    assert failed["passed"] is False and failed["allow_unavailable"] is False
    (c,) = failed["checks"]
    assert c["status"] == "fail" and c["passed"] is False and c["value"] is None
    assert "unavailable" in c["reason"] and "get_available_providers" in c["reason"]
    assert "--allow-unavailable" in c["reason"]
    assert verdict_exit_code(failed) is ExitCode.GATE_FAILED

    allowed = evaluate_gates([parse_gate(f"{metric}[cuda] <= 1.0")], report, allow_unavailable=True)
    assert allowed["passed"] is True and allowed["allow_unavailable"] is True
    (c,) = allowed["checks"]
    assert c["status"] == "unavailable" and c["passed"] is True
    assert "allowed" in c["reason"] and "get_available_providers" in c["reason"]
    assert verdict_exit_code(allowed) is ExitCode.OK


def test_failed_provider_fails_with_its_error_unless_allowed():
    c = check("latency_ratio[tensorrt] <= 1.0")
    assert c["status"] == "fail" and not c["passed"]
    assert "failed" in c["reason"] and "could not build the engine" in c["reason"]
    c = check("latency_ratio[tensorrt] <= 1.0", allow_unavailable=True)
    assert c["status"] == "unavailable" and c["passed"]
    assert "failed" in c["reason"] and "allowed" in c["reason"]


def test_allow_unavailable_does_not_excuse_a_real_failure():
    section = evaluate_gates(
        [parse_gate("latency_ratio[tensorrt] <= 1"), parse_gate("latency_ratio[cuda] <= 1.0")],
        sample_report(),
        allow_unavailable=True,
    )
    assert [c["status"] for c in section["checks"]] == ["unavailable", "fail"]
    assert section["passed"] is False


def test_provider_not_measured_is_missing():
    report = sample_report()
    del report["validation"]["latency"]["cuda"]
    for allow in (False, True):
        c = check("latency_ratio[cuda] <= 1.0", report, allow_unavailable=allow)
        assert c["status"] == "missing" and c["passed"] is False
        assert "not measured" in c["reason"] and "--providers" in c["reason"]


def test_latency_not_measured_at_all():
    report = sample_report()
    del report["validation"]["latency"]
    c = check("latency_ms[cpu] <= 10", report)
    assert c["status"] == "missing" and "latency was not measured" in c["reason"]


# ------------------------------------------------------------------ missing values, None, NaN


def test_accuracy_without_labels_fails_saying_so():
    report = sample_report()
    del report["validation"]["fidelity"]["accuracy"]
    for expr in ("accuracy >= 0.5", "accuracy_drop <= 0.01"):
        c = check(expr, report)
        assert c["status"] == "missing" and c["passed"] is False and c["value"] is None
        assert "no labels in the data" in c["reason"]


@pytest.mark.parametrize(
    "expr", ["cosine >= 0.99", "latency_ratio[cpu] <= 1", "accuracy >= 0.5", "top1_agreement >= 0.9"]
)
def test_validation_skipped_fails_saying_so(expr):
    report = sample_report()
    del report["validation"]
    section = evaluate_gates([parse_gate(expr)], report)
    (c,) = section["checks"]
    assert section["passed"] is False and c["status"] == "missing"
    assert "validation was skipped" in c["reason"]


def test_size_metrics_fall_back_to_input_and_output_sizes_without_validation():
    report = sample_report()
    del report["validation"]
    assert check("size_ratio <= 0.4", report)["value"] == pytest.approx(0.4)
    assert check("nonzeros_ratio <= 0.5", report)["value"] == pytest.approx(0.5)
    del report["input"]["size"]
    c = check("size_ratio <= 0.5", report)
    assert c["status"] == "missing" and "validation was skipped" in c["reason"]


def test_top1_agreement_null_fails_with_a_reason():
    report = sample_report()
    report["validation"]["fidelity"]["top1_agreement"] = None
    c = check("top1_agreement >= 0.5", report)
    assert c["passed"] is False and c["status"] == "missing" and c["value"] is None
    assert "null" in c["reason"] and "class" in c["reason"]


def test_null_value_fails_with_a_reason():
    report = sample_report()
    report["validation"]["latency"]["cpu"]["ratio"] = None
    c = check("latency_ratio <= 100", report)
    assert c["passed"] is False and "null" in c["reason"]


def test_non_numeric_value_fails():
    report = sample_report()
    report["validation"]["fidelity"]["cosine"] = "high"
    c = check("cosine >= 0", report)
    assert c["passed"] is False and "not a number" in c["reason"]


@pytest.mark.parametrize("op", list(OPERATORS))
def test_nan_never_passes(op):
    report = sample_report()
    report["validation"]["fidelity"]["cosine"] = float("nan")
    c = check(f"cosine {op} 0.5", report)
    assert c["passed"] is False and c["status"] == "fail"
    assert math.isnan(c["value"]) and "NaN" in c["reason"]


def test_infinite_value_compares_as_infinity():
    report = sample_report()
    report["validation"]["fidelity"]["max_abs_error"] = float("inf")
    assert check("max_abs_error <= 1e30", report)["passed"] is False
    assert check("max_abs_error > 1e30", report)["passed"] is True


def test_report_is_not_modified():
    report = sample_report()
    before = copy.deepcopy(report)
    evaluate_gates([parse_gate(k + " <= 1") for k in METRIC_VALUES], report)
    assert report == before


# ------------------------------------------------------------------ the section and the verdict


def test_gate_section_shape_and_verdict():
    checks = [parse_gate("size_ratio <= 0.5"), parse_gate("top1_agreement >= 0.99"), parse_gate("cosine>=0.999")]
    section = evaluate_gates(checks, sample_report())
    assert set(section) == {"passed", "allow_unavailable", "strict_latency", "checks"}
    assert section["passed"] is False
    assert [c["passed"] for c in section["checks"]] == [True, False, True]
    for c in section["checks"]:
        assert set(c) == {
            "expr",
            "metric",
            "provider",
            "output",
            "op",
            "threshold",
            "value",
            "passed",
            "status",
            "reason",
        }
        assert c["reason"]
    assert section["checks"][1]["reason"] == "0.98 < 0.99 (needs >= 0.99)"
    assert verdict_exit_code(section) == 1
    assert verdict_exit_code(evaluate_gates(checks[::2], sample_report())) == 0


def test_no_checks_pass_and_exit_code_edges():
    assert evaluate_gates([], sample_report())["passed"] is True
    assert verdict_exit_code(None) is ExitCode.OK
    assert verdict_exit_code({"passed": True, "checks": [{"passed": False}]}) == 1  # inconsistent → fail
    assert verdict_exit_code({"passed": False, "checks": []}) == 1


# ------------------------------------------------------------------ parse errors


def usage_error(expr: str) -> str:
    with pytest.raises(UsageError) as info:
        parse_gate(expr)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_metric_lists_known_metrics():
    message = usage_error("size_ration <= 0.5")
    assert "unknown metric 'size_ration'" in message and "size_ration <= 0.5" in message
    for name in METRICS:
        assert name in message


def test_unknown_provider_lists_known_providers():
    message = usage_error("latency_ratio[gpu] <= 1.0")
    assert "unknown provider 'gpu'" in message
    for name in PROVIDERS:
        assert name in message
    assert "unknown provider ''" in usage_error("latency_ratio[] <= 1.0")


def test_provider_on_a_metric_without_one():
    message = usage_error("size_ratio[cpu] >= 0.9")
    assert (
        "takes no [selector]" in message
        and "latency_ratio" in message
        and "latency_ms" in message
        and "cosine" in message
    )


@pytest.mark.parametrize(
    "expr,bad",
    [
        ("size_ratio = 0.5", "'='"),
        ("size_ratio != 0.5", "'!='"),
        ("size_ratio => 0.5", "'=>'"),
        ("size_ratio <<= 0.5", "'<<='"),
    ],
)
def test_unknown_operator(expr, bad):
    message = usage_error(expr)
    assert f"unknown operator {bad}" in message and expr in message
    for op in OPERATORS:
        assert op in message


@pytest.mark.parametrize(
    "expr,fragment",
    [
        ("size_ratio <= half", "'half' is not a number"),
        ("size_ratio <= 0.5 ms", "'0.5 ms' is not a number"),
        ("size_ratio <=", "missing the threshold"),
        ("size_ratio 0.5", "missing comparison operator"),
        ("size_ratio <= nan", "finite"),
        ("size_ratio <= inf", "finite"),
        ("", "empty gate expression"),
        ("<= 0.5", "cannot parse"),
    ],
)
def test_bad_expressions_name_the_expression(expr, fragment):
    message = usage_error(expr)
    assert fragment in message
    if expr:
        assert repr(expr.strip()) in message


def test_non_string_gate():
    with pytest.raises(UsageError, match="expected a string"):
        parse_gate(0.5)  # type: ignore[arg-type]


def test_format_number():
    assert format_number(0.5) == "0.5"
    assert format_number(0.1 + 0.2) == "0.30000000000000004"  # never rounds to something it is not
    assert format_number(3) == "3"
    assert format_number(None) == "null"
    assert format_number(float("nan")) == "NaN"
    assert format_number(float("-inf")) == "-inf"


# ------------------------------------------------------------------ docs


def test_every_metric_is_documented_with_its_report_key():
    text = (DOCS / "gate.md").read_text(encoding="utf-8")
    for metric in METRICS.values():
        assert f"`{metric.name}`" in text, metric.name
        assert f"`{metric.source}`" in text, metric.source
    for provider in PROVIDERS:
        assert f"`{provider}`" in text
    for op in OPERATORS:
        assert f"`{op}`" in text
