"""The HTML report: per-tensor byte breakdown, rendering, escaping, the CLI, and a real headless browser.

Browser tests open the pages in Debian's ``chromium`` (headless) and read back the status the page's
script writes after drawing: every chart drew (non-blank canvas), no script error, no console message.
They skip, saying why, where no browser is installed (set ``ONNXSHRINK_CHROMIUM`` to use another binary).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.ir.tensors import stored_tensors
from onnxshrink.reports.html import render_html, report_kind
from onnxshrink.run.recipe import load_recipe
from onnxshrink.validate.tensors import stored_bytes, tensor_breakdown
from tests.support.files import MODELS, folder_digest

CHART_SPEC = re.compile(r'<canvas id="(chart-\d+)"')


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """One real shrink of the shipped CNN with --data: the model, JSON report and HTML page."""
    from click.testing import CliRunner

    from onnxshrink.cli import main

    out = tmp_path_factory.mktemp("cnn")
    args = [
        str(MODELS / "cnn.onnx"),
        "--plugin",
        "int_quant",
        "--data",
        str(MODELS / "cnn_eval.npz"),
        "--repeats",
        "5",
        "--gate",
        "size_ratio<=0.5",
        "--gate",
        "cosine>=0.99",
        "-o",
        str(out / "cnn.q.onnx"),
        "--report",
        str(out / "report.json"),
        "--html",
        str(out / "report.html"),
        "-q",
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def tune_report() -> dict:
    """A tune report by the onnxshrink.tune/1 schema: ok, failed and timed-out trials, a front, a choice."""
    chains = (
        [[{"plugin": "weight_prune", "options": {"sparsity": s}}] for s in (0.3, 0.5, 0.7, 0.9)]
        + [[{"plugin": "int_quant", "options": {"bits": b}}] for b in (8, 4)]
        + [[{"plugin": "weight_prune", "options": {"sparsity": 0.5}}, {"plugin": "int_quant", "options": {"bits": 8}}]]
    )
    metrics = [
        (1.0, 0.9999, 1.02),
        (0.98, 0.999, 0.97),
        (0.97, 0.99, 1.01),
        (0.96, 0.95, 0.99),
        (0.27, 0.9999, 0.92),
        (0.15, 0.998, 1.2),
        (0.26, 0.9995, 0.93),
    ]
    trials = []
    for number, (chain, (size, cosine, latency)) in enumerate(zip(chains, metrics)):
        trials.append(
            {
                "number": number,
                "chain": chain,
                "status": "ok",
                "error": None,
                "passed": cosine >= 0.999,
                "metrics": {
                    "size_ratio": size,
                    "file_bytes": int(692264 * size),
                    "cosine": cosine,
                    "latency_ratio": {"cpu": latency},
                },
                "seconds": 1.5 + number,
            }
        )
    trials.append(
        {
            "number": 7,
            "chain": [{"plugin": "binarize", "options": {}}],
            "status": "failed",
            "error": "plugin binarize: <no layer> & 'quotes'",
            "passed": False,
            "metrics": {"size_ratio": None, "file_bytes": None, "cosine": None, "latency_ratio": None},
            "seconds": 0.4,
        }
    )
    trials.append(
        {
            "number": 8,
            "chain": [{"plugin": "gptq", "options": {"bits": 2}}],
            "status": "timeout",
            "error": "timed out after 60 s",
            "passed": False,
            "metrics": {"size_ratio": None, "file_bytes": None, "cosine": None, "latency_ratio": None},
            "seconds": 60.0,
        }
    )
    return {
        "schema": "onnxshrink.tune/1",
        "model": {"path": "models/cnn.onnx", "file_bytes": 692264},
        "gates": ["cosine>=0.999"],
        "objective": "size",
        "trials": trials,
        "pareto": [4, 6, 5],
        "chosen": 6,
        "seconds": 81.9,
    }


def with_distributions(report: dict) -> dict:
    """The report with the per-run and per-feed keys another branch adds (times_ms, ratio_ci, cosine_per_feed)."""
    report = copy.deepcopy(report)
    rng = np.random.default_rng(0)
    for entry in report["validation"]["latency"].values():
        entry["baseline"]["times_ms"] = (10 + rng.gamma(2.0, 0.5, 40)).round(4).tolist()
        entry["candidate"]["times_ms"] = (9 + rng.gamma(2.0, 0.5, 40)).round(4).tolist()
        entry["ratio_ci"] = [0.86, 0.97]
    for out in report["validation"]["fidelity"]["outputs"].values():
        per_feed = (1 - rng.gamma(1.0, 1e-5, 8)).tolist()
        out.update(cosine_per_feed=per_feed, cosine_worst=min(per_feed), cosine_mean=sum(per_feed) / len(per_feed))
    return report


# --------------------------------------------------------------------------- per-tensor breakdown


def test_breakdown_counts_every_stored_byte_of_the_shipped_cnn(cnn_run):
    before, after = MODELS / "cnn.onnx", cnn_run / "cnn.q.onnx"
    result = tensor_breakdown(before, after)
    for side, path in (("before", before), ("after", after)):
        listed = (
            sum((r[side] or {}).get("bytes", 0) for r in result["rows"])
            + result["other"][side]
            + result["unattributed"][side]
        )
        stored = sum(stored_bytes(t) for t in stored_tensors(onnx.load(str(path))))
        assert listed == stored
        assert sum(t[side] for t in result["by_op_type"].values()) + result["unattributed"][side] == stored
    conv = result["by_op_type"]["Conv"]
    assert conv["after"] < conv["before"] / 3  # int8 weights plus float scales
    row = next(r for r in result["rows"] if r["tensor"] == "layer2.0.conv2.weight")
    assert row["op_type"] == "Conv" and row["slot"] == 1 and row["shape"] == [64, 64, 3, 3]
    assert row["before"] == {"form": "float32", "bytes": 64 * 64 * 9 * 4, "tensors": 1}
    assert row["after"]["form"].startswith("int8") and "Mul" in row["after"]["form"]
    assert row["after"]["bytes"] == 64 * 64 * 9 + 64 * 4
    assert "shape" not in row["after"]  # unchanged shape is not repeated


def test_breakdown_follows_decoders_constants_and_shared_weights(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    q = np.round(w / 0.05).astype(np.int8)
    nodes = [
        helper.make_node("Constant", [], ["wc"], value=numpy_helper.from_array(w, "wc")),
        helper.make_node("MatMul", ["x", "wc"], ["h"], name="first"),
        helper.make_node("DequantizeLinear", ["wq", "scale"], ["wd"]),
        helper.make_node("MatMul", ["h2", "wd"], ["y"], name="second"),
        helper.make_node("Transpose", ["shared"], ["shared_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "shared"], ["h2a"], name="third"),
        helper.make_node("Add", ["h", "h2a"], ["h2"]),
        helper.make_node("MatMul", ["y", "shared_t"], ["z"], name="fourth"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("unused_out", TensorProto.FLOAT, [2]),
        ],
        [
            numpy_helper.from_array(q.T.copy().T, "wq"),
            numpy_helper.from_array(np.float32(0.05), "scale"),
            numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "shared"),
            numpy_helper.from_array(np.zeros(2, np.float32), "unused_out"),
        ],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    result = tensor_breakdown(path)
    rows = {r["layer"]: r for r in result["rows"]}
    assert rows["first"]["tensor"] == "wc" and rows["first"]["before"]["bytes"] == 8 * 4 * 4  # a Constant node's tensor
    assert rows["second"]["before"] == {"form": "int8+float32 via DequantizeLinear", "bytes": 32 + 4, "tensors": 2}
    assert rows["third"]["before"]["bytes"] == 8 * 4 * 4 and "fourth" not in rows  # shared: counted once, first reader
    assert result["unattributed"]["before"] == 8  # read by no layer
    assert "after" not in rows["first"]


def test_breakdown_of_a_layer_whose_op_was_replaced_is_one_row(tmp_path):
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 3)).astype(np.float32), np.ones(3, np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    gemm = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")],
        "g",
        [x],
        [y],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    half = helper.make_graph(
        [
            helper.make_node("Cast", ["w16"], ["w32"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["x", "w32"], ["y"], name="fc_matmul"),
        ],
        "g",
        [x],
        [y],
        [numpy_helper.from_array(w.astype(np.float16), "w16")],
    )
    for name, graph in (("a.onnx", gemm), ("b.onnx", half)):
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / name)
    [row] = tensor_breakdown(tmp_path / "a.onnx", tmp_path / "b.onnx")["rows"]
    assert row["slot"] is None and row["layer"] == "fc" and row["op_type"] == "Gemm"
    assert row["before"] == {"form": "float32", "bytes": 4 * 3 * 4 + 3 * 4, "tensors": 2}
    assert row["after"] == {"form": "float16 via Cast", "bytes": 4 * 3 * 2, "tensors": 1}


def test_shrink_report_has_the_breakdown_and_sensitivity_shows(cnn_run):
    report = json.loads((cnn_run / "report.json").read_text())
    assert report["tensors"]["rows"] and report["tensors"]["by_op_type"]["Conv"]["after"] > 0
    report["steps"][0]["stats"]["sensitivity"] = {
        "layers": [{"layer": "/layer2/layer2.0/conv2/Conv", "op_type": "Conv", "cosine": 0.99, "sensitivity": 0.0123}]
    }
    page = render_html(report)
    assert '<th class=num scope="col">sensitivity</th>' in page and "0.0123" in page


# --------------------------------------------------------------------------- rendering without a browser


def test_page_is_one_offline_file_and_deterministic(cnn_run):
    page = (cnn_run / "report.html").read_text()
    report = json.loads((cnn_run / "report.json").read_text())
    assert render_html(report) == render_html(copy.deepcopy(report)) == page
    assert len(page.encode()) < 2_000_000
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page)  # nothing fetched from anywhere
    assert "default-src 'none'" in page
    assert "GATE PASSED" in page and "layer2.0.conv2.weight" in page
    charts = CHART_SPEC.findall(page)
    data = json.loads(
        re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    )
    validation = report["validation"]
    per_feed = sum(1 for o in validation["fidelity"]["outputs"].values() if o.get("cosine_per_feed"))
    timed = sum(1 for e in validation["latency"].values() if e["status"] == "ok")
    assert [c["id"] for c in data["charts"]] == charts and len(
        charts
    ) == 2 + timed + per_feed  # op types, layers, latency, fidelity


def test_every_report_kind_is_told_apart(cnn_run, tmp_path):
    report = json.loads((cnn_run / "report.json").read_text())
    assert report_kind(report) == "shrink"
    gate = {**report, "steps": []}
    assert report_kind(gate) == "gate"
    assert report_kind({"schema": "onnxshrink.report/1", "model": "m.onnx", "size": {}, "latency": {}}) == "bench"
    assert (
        report_kind({"schema": "onnxshrink.report/1", "baseline": "a", "candidate": "b", "validation": {}}) == "compare"
    )
    assert report_kind(tune_report()) == "tune"
    from onnxshrink.errors import UsageError

    with pytest.raises(UsageError, match="not an onnxshrink report"):
        report_kind({"schema": "something/else"})


def test_hostile_text_is_escaped():
    evil = '</script><script>document.body.dataset.pwned=1</script><img src=x onerror="document.body.dataset.pwned=2">'
    report = tune_report()
    report["model"]["path"] = evil
    report["trials"][0]["chain"][0]["plugin"] = evil
    report["trials"][7]["error"] = evil
    page = render_html(report)
    assert "<script>document.body" not in page and "<img src=x" not in page
    assert page.count("<script") == 4  # the error hook, the data block, Chart.js, the page script


def test_tune_page_lists_every_trial_and_marks_the_choice():
    page = render_html(tune_report())
    assert "CHOSEN: TRIAL 6" in page
    assert page.count("<tr") == 1 + 9  # header + every trial, failed and timed out included
    assert "timeout" in page and "&lt;no layer&gt; &amp; &#x27;quotes&#x27;" in page
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1))
    [pareto] = [c for c in data["charts"] if c["kind"] == "pareto"]
    assert len(pareto["points"]) == 7 and [p["trial"] for p in pareto["points"] if p["chosen"]] == [6]
    assert sorted(p["trial"] for p in pareto["points"] if p["pareto"]) == [4, 5, 6]


def test_distributions_are_drawn_when_the_report_has_them(cnn_run):
    report = with_distributions(json.loads((cnn_run / "report.json").read_text()))
    page = render_html(report)
    assert "per-run latency, interleaved runs" in page and "cosine per feed" in page
    assert "[0.86, 0.97]" in page  # the ratio's interval
    assert len(CHART_SPEC.findall(page)) == 4


# --------------------------------------------------------------------------- the CLI


def test_report_command_renders_saved_reports(cnn_run, tmp_path, cli):
    (tmp_path / "tune.json").write_text(json.dumps(tune_report()))
    result = cli("report", tmp_path / "tune.json", "--html", tmp_path / "tune.html")
    assert result.exit_code == 0, result
    assert "CHOSEN: TRIAL 6" in (tmp_path / "tune.html").read_text()
    result = cli("report", cnn_run / "report.json", "--html", tmp_path / "shrink.html")
    assert result.exit_code == 0 and (tmp_path / "shrink.html").read_text() == (cnn_run / "report.html").read_text()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not JSON: Expecting property name"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"schema": "other/1"}', "is not an onnxshrink report (schema 'other/1')"),
        (None, "cannot read report"),
    ],
)
def test_report_command_refuses_bad_input(tmp_path, cli, content, message):
    source = tmp_path / "in.json"
    if content is not None:
        source.write_text(content)
    before = folder_digest(tmp_path)
    result = cli("report", source, "--html", tmp_path / "out.html")
    assert result.exit_code == 2
    assert message in result.stderr and str(source) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert folder_digest(tmp_path) == before  # nothing written


def test_gate_and_bench_write_html_with_the_breakdown(cnn_run, tmp_path, cli):
    candidate = cnn_run / "cnn.q.onnx"
    result = cli(
        "gate",
        MODELS / "cnn.onnx",
        candidate,
        "--data",
        MODELS / "cnn_eval.npz",
        "--repeats",
        "3",
        "--gate",
        "size_ratio<=0.5",
        "--html",
        tmp_path / "gate.html",
        "-q",
    )
    assert result.exit_code == 0, result
    page = (tmp_path / "gate.html").read_text()
    assert "GATE PASSED" in page and "onnxshrink gate report" in page and "layer2.0.conv2.weight" in page
    result = cli("bench", MODELS / "mlp.onnx", "--repeats", "3", "--html", tmp_path / "bench.html")
    assert result.exit_code == 0, result
    page = (tmp_path / "bench.html").read_text()
    assert "onnxshrink bench report" in page and "net.2.weight" in page


def test_html_to_a_folder_is_refused_before_any_work(tmp_path, cli):
    (tmp_path / "dir.html").mkdir()
    result = cli(
        MODELS / "mlp.onnx", "--plugin", "weight_prune", "-o", tmp_path / "out.onnx", "--html", tmp_path / "dir.html"
    )
    assert result.exit_code == 2 and "dir.html" in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_recipe_html_output(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "m.onnx"\n[[steps]]\nplugin = "weight_prune"\n[report]\nhtml = "out/report.html"\n')
    assert load_recipe(recipe).html == tmp_path / "out" / "report.html"


# --------------------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    return (
        os.environ.get("ONNXSHRINK_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


needs_browser = pytest.mark.skipif(
    _chromium() is None,
    reason="no headless browser: install Debian's chromium package (or set ONNXSHRINK_CHROMIUM) "
    "to run the browser checks",
)


def open_in_browser(page: Path, profile: Path) -> tuple[dict, str, list[str]]:
    """Load ``page`` in headless Chromium; the status the page wrote, the final DOM and console lines."""
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--window-size=1280,2000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<pre id="render-status">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"the page wrote no status; DOM tail: {proc.stdout[-500:]!r}"
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(match.group(1)), proc.stdout, console


@needs_browser
def test_shrink_page_draws_every_chart_in_chromium(cnn_run, tmp_path):
    report = with_distributions(json.loads((cnn_run / "report.json").read_text()))
    pages = {"plain": cnn_run / "report.html", "distributions": tmp_path / "dist.html"}
    pages["distributions"].write_text(render_html(report))
    for name, page in pages.items():
        status, dom, console = open_in_browser(page, tmp_path / f"profile-{name}")
        expected = len(CHART_SPEC.findall(page.read_text()))
        assert status == {"expected": expected, "drawn": expected, "blank": [], "errors": []}, name
        assert 'data-render="done"' in dom and console == [], (name, console)


@needs_browser
def test_tune_page_draws_in_chromium_and_hostile_names_stay_text(tmp_path):
    report = tune_report()
    evil = '</script><script>document.body.dataset.pwned=1</script><img src=x onerror="document.body.dataset.pwned=2">'
    report["model"]["path"] = evil
    report["trials"][6]["chain"][0]["plugin"] = evil
    page = tmp_path / "tune.html"
    page.write_text(render_html(report))
    status, dom, console = open_in_browser(page, tmp_path / "profile")
    assert status == {"expected": 1, "drawn": 1, "blank": [], "errors": []}
    assert "data-pwned" not in dom and console == []
    assert "&lt;/script&gt;&lt;script&gt;document.body.dataset.pwned=1" in dom  # shown as text
