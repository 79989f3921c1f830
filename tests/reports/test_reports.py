"""Report writers: JUnit XML parsed back, strict JSON, Markdown summaries, atomic writes."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from onnxshrink.errors import UsageError
from onnxshrink.reports import json_safe, render_markdown, write_json, write_junit, write_markdown
from onnxshrink.validate.gate import evaluate_gates, parse_gate
from tests.support.reports import sample_report

GATES = [
    "size_ratio <= 0.5",  # pass (0.4)
    "latency_ratio[cpu] <= 0.5",  # fail (0.75)
    "latency_ratio[tensorrt] <= 1.0",  # provider failed: allowed below
    "top1_agreement >= 0.99",  # fail (0.98)
    "cosine >= 0.999",  # pass
]


def gated_report(allow_unavailable: bool = True, gates: list[str] = GATES) -> dict:
    report = sample_report()
    report["gate"] = evaluate_gates([parse_gate(g) for g in gates], report, allow_unavailable=allow_unavailable)
    return report


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------ JUnit


def test_junit_one_testcase_per_check(tmp_path):
    report = gated_report()
    path = tmp_path / "out" / "gate.xml"  # the folder is created
    write_junit(report["gate"], path, report=report)
    root = ET.parse(path).getroot()

    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    assert suite.get("name") == "onnxshrink.gate"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        "5",
        "2",
        "0",
        "1",
    )
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("5", "2", "1")

    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == GATES
    assert {c.get("classname") for c in cases} == {"onnxshrink.gate"}

    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    assert set(failed) == {"latency_ratio[cpu] <= 0.5", "top1_agreement >= 0.99"}
    latency = failed["latency_ratio[cpu] <= 0.5"].get("message")
    assert "0.75" in latency and "<= 0.5" in latency
    top1 = failed["top1_agreement >= 0.99"].get("message")
    assert "0.98" in top1 and ">= 0.99" in top1

    skipped = [c for c in cases if c.find("skipped") is not None]
    assert [c.get("name") for c in skipped] == ["latency_ratio[tensorrt] <= 1.0"]
    assert "allowed" in skipped[0].find("skipped").get("message")
    assert skipped[0].find("failure") is None

    for case in cases:
        out = case.find("system-out").text
        assert "value:" in out and "threshold:" in out and "reason:" in out
    assert "value: 0.4" in cases[0].find("system-out").text
    assert cases[0].find("failure") is None and cases[0].find("skipped") is None

    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["baseline"] == "models/cnn.onnx" and props["candidate"] == "out/cnn.small.onnx"
    assert props["verdict"] == "failed" and props["allow_unavailable"] == "true"
    assert leftovers(path.parent) == []


def test_junit_unavailable_not_allowed_is_a_failure(tmp_path):
    report = gated_report(allow_unavailable=False)
    path = write_junit(report["gate"], tmp_path / "gate.xml", suite_name="cnn.gate")
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite.get("name") == "cnn.gate" and (suite.get("failures"), suite.get("skipped")) == ("3", "0")
    trt = [c for c in suite.findall("testcase") if "tensorrt" in c.get("name")][0]
    assert trt.get("classname") == "cnn.gate"
    assert "could not build the engine" in trt.find("failure").get("message")


def test_junit_missing_metric_message(tmp_path):
    report = sample_report()
    del report["validation"]["fidelity"]["accuracy"]
    gate = evaluate_gates([parse_gate("accuracy >= 0.9")], report)
    case = ET.parse(write_junit(gate, tmp_path / "g.xml")).getroot().find("testsuite/testcase")
    assert "no labels in the data" in case.find("failure").get("message")
    assert case.find("failure").get("type") == "missing"


def test_junit_all_passed_and_empty(tmp_path):
    gate = gated_report(gates=["size_ratio <= 0.5"])["gate"]
    suite = ET.parse(write_junit(gate, tmp_path / "a.xml")).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("1", "0", "0")
    empty = ET.parse(
        write_junit({"passed": True, "allow_unavailable": False, "checks": []}, tmp_path / "b.xml")
    ).getroot()
    assert empty.find("testsuite").get("tests") == "0" and empty.find("testsuite/testcase") is None


def test_junit_survives_characters_xml_cannot_hold(tmp_path):
    report = sample_report()
    report["validation"]["latency"]["cuda"] = {"status": "unavailable", "reason": "bad \x00 byte & <tag> \x1b[31m"}
    gate = evaluate_gates([parse_gate("latency_ms[cuda] <= 1")], report)
    case = ET.parse(write_junit(gate, tmp_path / "g.xml")).getroot().find("testsuite/testcase")
    assert "& <tag>" in case.find("failure").get("message")


def test_junit_replaces_an_existing_file_atomically(tmp_path):
    path = tmp_path / "gate.xml"
    path.write_text("old")
    write_junit(gated_report()["gate"], path)
    assert ET.parse(path).getroot().tag == "testsuites"
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ JSON


def strict_loads(text: str):
    def refuse(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_and_keeps_insertion_order(tmp_path):
    report = gated_report()
    report["validation"]["fidelity"]["cosine"] = float("nan")
    report["validation"]["fidelity"]["max_abs_error"] = float("inf")
    report["extra"] = {"path": Path("a/b.onnx"), "shape": (1, 3), "neg": float("-inf")}
    path = write_json(report, tmp_path / "report.json")
    text = path.read_text(encoding="utf-8")
    data = strict_loads(text)
    assert data["validation"]["fidelity"]["cosine"] is None
    assert data["validation"]["fidelity"]["max_abs_error"] is None
    assert data["extra"] == {"path": "a/b.onnx", "shape": [1, 3], "neg": None}
    assert list(data) == list(report)  # insertion order, not sorted
    assert list(data["validation"]) == ["data", "size", "latency", "fidelity"]
    assert text.startswith('{\n  "schema"') and text.endswith("}\n")
    assert data["gate"]["checks"][0]["expr"] == GATES[0]
    assert leftovers(tmp_path) == []


def test_json_safe_converts_numpy_like_values():
    class Scalar:
        def item(self):
            return float("nan")

    class Array:
        def tolist(self):
            return [1.0, float("inf")]

    assert json_safe({1: Scalar(), "a": Array(), "s": {2, 1}}) == {"1": None, "a": [1.0, None], "s": [1, 2]}
    assert json_safe(True) is True and json_safe(3) == 3


def test_write_into_a_directory_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="is a directory"):
        write_json({}, tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions as a normal user")
def test_unwritable_folder_is_a_usage_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="cannot write"):
            write_json({}, locked / "r.json")
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------ Markdown


def test_markdown_failing_gate(tmp_path):
    report = gated_report()
    text = render_markdown(report)
    first = text.splitlines()[0]
    assert first.startswith("## ❌") and "FAIL" in first
    assert "3 of 5 checks passed" in text and "--allow-unavailable" in text
    for expr in GATES:
        assert f"`{expr}`" in text
    rows = {
        line.split("|")[2].strip(): line
        for line in text.splitlines()
        if line.startswith("| ") and "`" in line.split("|")[2]
    }
    assert "✅" in rows["`size_ratio <= 0.5`"] and "pass" in rows["`size_ratio <= 0.5`"]
    assert "❌" in rows["`latency_ratio[cpu] <= 0.5`"] and "FAIL" in rows["`latency_ratio[cpu] <= 0.5`"]
    assert "⚠️" in rows["`latency_ratio[tensorrt] <= 1.0`"]
    # models, size, latency, fidelity, steps
    assert "`models/cnn.onnx`" in text and "`out/cnn.small.onnx`" in text
    assert "### Size" in text and "| file bytes | 1000 B | 400 B | 0.4 (−60.0%) |" in text
    assert "| parameters | 200 | 200 | 1 (±0.0%) |" in text
    assert "### Latency" in text and "| `cpu` | ok | 2 ms | 1.5 ms | 2.4 ms | 1.8 ms | 0.75 (−25.0%) |" in text
    assert "failed: TensorRT could not build the engine" in text
    assert "spread 30% is wide" in text
    assert "0.9 → 0.88 (drop 0.02)" in text and "| cosine similarity | 0.9995 |" in text
    assert "| 1 | `weight_prune` | `sparsity=0.5, scope=global` | 0.12 |" in text
    assert "`models/cnn_eval.npz`, 32 samples" in text

    path = write_markdown(report, tmp_path / "summary.md")
    assert path.read_text(encoding="utf-8") == text


def test_markdown_passing_gate():
    text = render_markdown(gated_report(gates=["size_ratio <= 0.5", "cosine >= 0.999"]))
    assert text.splitlines()[0].startswith("## ✅") and "PASS" in text.splitlines()[0]
    assert "2 of 2 checks passed." in text


def test_markdown_without_validation_or_gate():
    report = sample_report()
    del report["validation"]
    text = render_markdown(report)
    assert text.startswith("## onnxshrink report")
    assert "No gate checks" in text and "Validation was skipped" in text
    assert "### Gate" not in text and "### Latency" not in text and "### Fidelity" not in text
    # size still comes from input/output sizes
    assert "| file bytes | 1000 B | 400 B | 0.4 (−60.0%) |" in text
    assert "### Steps" in text


def test_markdown_minimal_report():
    text = render_markdown({})
    assert text.startswith("## onnxshrink report") and text.endswith("\n")


def test_markdown_no_latency_no_labels_synthetic_data():
    report = gated_report(gates=["cosine >= 0.9"])
    del report["validation"]["latency"]
    del report["validation"]["fidelity"]["accuracy"]
    report["validation"]["data"].update(source=None, synthetic=True, warnings=["fidelity on random inputs"])
    report["validation"]["fidelity"]["top1_agreement"] = None
    text = render_markdown(report)
    assert "### Latency" not in text
    assert "_no labels in the data_" in text
    assert "synthetic inputs" in text and "fidelity on random inputs" in text
    assert "| top-1 agreement | — |" in text


def test_markdown_escapes_pipes_in_cells():
    report = sample_report()
    report["validation"]["latency"]["cuda"] = {"status": "unavailable", "reason": "a | b\nc"}
    text = render_markdown(report)
    row = [line for line in text.splitlines() if line.startswith("| `cuda`")][0]
    assert "a \\| b c" in row
    assert row.count(" | ") == 6  # seven cells, the pipe inside the reason is escaped


def test_markdown_per_output_fidelity_when_several_outputs():
    report = sample_report()
    report["validation"]["fidelity"]["outputs"]["boxes"] = {
        "cosine": 0.97,
        "max_abs_error": 1.5,
        "rel_error": 0.2,
        "top1_agreement": None,
    }
    text = render_markdown(report)
    assert "<details><summary>Per output</summary>" in text
    assert "| `boxes` | 0.97 | 1.5 | 0.2 | — |" in text


def test_console_latency_table_without_a_ratio():
    """A timed run that reads 0 ns on the thread clock leaves the ratio None: the table says so, it
    does not crash the run (exit 3 'unsupported format string passed to NoneType')."""
    from onnxshrink.cli.console import latency_table

    model = {"median_ms": 0.01, "p90_ms": 0.02}
    table, notes = latency_table(
        {
            "cpu": {
                "status": "ok",
                "baseline": model,
                "candidate": model,
                "ratio": None,
                "ratio_ci": None,
                "clock": "thread",
            }
        }
    )
    assert table.row_count == 1
    assert any("no ratio" in note for note in notes)
