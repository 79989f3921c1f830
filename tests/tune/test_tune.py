"""``onnxshrink tune`` end to end on the digits MLP with tiny budgets: report, output, recipe rebuild,
failed trials, Ctrl-C, --resume and bad input. Trials are real child processes running real methods."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time

import pytest

from onnxshrink.errors import ExitCode
from onnxshrink.tune.trial import run_isolated
from tests.support.files import MODELS, sha256

MLP, MLP_DATA = MODELS / "mlp.onnx", MODELS / "mlp_eval.npz"
SPACE = 'chains = [["int_quant"]]\n[int_quant]\nmode = "storage"\nbits = [8, 4]\n'
STATUSES = {"ok", "failed", "timeout", "invalid"}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One small search: int_quant storage, bits 8 or 4, 3 trials, 2 at a time."""
    from click.testing import CliRunner

    from onnxshrink.cli import main

    folder = tmp_path_factory.mktemp("tune")
    (folder / "space.toml").write_text(SPACE)
    before = sha256(MLP)
    args = [
        "tune",
        MLP,
        "--data",
        MLP_DATA,
        "--gate",
        "cosine>=0.99",
        "--gate",
        "latency_ratio[cpu]<=3.0",
        "--space",
        folder / "space.toml",
        "--trials",
        3,
        "--jobs",
        2,
        "-o",
        folder / "best.onnx",
        "--report",
        folder / "tune.json",
        "--save-recipe",
        folder / "best.toml",
        "--html",
        folder / "tune.html",
    ]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return {
        "folder": folder,
        "result": result,
        "report": json.loads((folder / "tune.json").read_text()),
        "before": before,
    }


def test_report_has_the_schema(tuned):
    assert tuned["result"].exit_code is ExitCode.OK, tuned["result"].output
    report = tuned["report"]
    assert report["schema"] == "onnxshrink.tune/1"
    assert report["model"] == {"path": str(MLP), "file_bytes": MLP.stat().st_size}
    assert report["gates"] == ["cosine>=0.99", "latency_ratio[cpu]<=3.0"] and report["objective"] == "size"
    assert len(report["trials"]) == 3 and [t["number"] for t in report["trials"]] == [0, 1, 2]
    for t in report["trials"]:
        assert t["status"] in STATUSES and isinstance(t["passed"], bool) and isinstance(t["seconds"], float)
        assert [s["plugin"] for s in t["chain"]] == ["int_quant"] and t["chain"][0]["options"]["mode"] == "storage"
        if t["status"] == "ok":
            m = t["metrics"]
            assert set(m) >= {"size_ratio", "file_bytes", "cosine", "latency_ratio"}
            assert m["size_ratio"] == pytest.approx(m["file_bytes"] / MLP.stat().st_size)
            assert m["size_ratio"] < 0.5  # int8 storage at most
            assert m["latency_ratio"] is None or set(m["latency_ratio"]) == {"cpu"}
    # the start points: 4 bits in blocks of 32 then 128 (the low-bit points), then the starting values, 8 bits
    options = [t["chain"][0]["options"] for t in report["trials"]]
    assert [(o["bits"], o.get("block_size")) for o in options] == [(4, 32), (4, 128), (8, 0)]
    assert report["trials"][2]["metrics"]["cosine"] > 0.999
    chosen = next(t for t in report["trials"] if t["number"] == report["chosen"])
    assert chosen["passed"] and chosen["timed"] and chosen["metrics"]["latency_ratio"]["cpu"] > 0
    assert report["chosen"] in report["pareto"]
    assert set(report["pareto"]) <= {t["number"] for t in report["trials"] if t["timed"]}
    assert min(t["metrics"]["file_bytes"] for t in report["trials"] if t["passed"]) == chosen["metrics"]["file_bytes"]
    assert report["backend"]["name"] == "local" and report["backend"]["jobs"] == 2
    assert report["interrupted"] is False and report["seconds"] > 0


def test_html_page_lists_every_trial(tuned):
    page = (tuned["folder"] / "tune.html").read_text()
    assert "Pareto" in page and "<script src=" not in page
    table = page.split("<h3>Every trial</h3>", 1)[1]
    assert table.count("<tr class=chosen>") == 1
    assert table.count("<tr") - 1 == len(tuned["report"]["trials"])  # a header row, then one row per trial


def test_output_is_the_chosen_model_and_the_recipe_rebuilds_it_byte_identically(tuned, cli):
    folder, report = tuned["folder"], tuned["report"]
    chosen = next(t for t in report["trials"] if t["number"] == report["chosen"])
    assert (folder / "best.onnx").stat().st_size == chosen["metrics"]["file_bytes"]
    result = cli("--recipe", folder / "best.toml", "-o", folder / "rebuilt.onnx", "-q")
    assert result.exit_code == 0, result
    assert (folder / "rebuilt.onnx").read_bytes() == (folder / "best.onnx").read_bytes()
    assert sha256(MLP) == tuned["before"]


def test_resume_replays_the_finished_trials(tuned, cli):
    folder = tuned["folder"]
    result = cli(
        "tune",
        MLP,
        "--data",
        MLP_DATA,
        "--gate",
        "cosine>=0.99",
        "--space",
        folder / "space.toml",
        "--trials",
        1,
        "--resume",
        folder / "tune.json",
        "-o",
        folder / "resumed.onnx",
        "--report",
        folder / "resumed.json",
        "-q",
    )
    assert result.exit_code == 0, result
    old, new = tuned["report"], json.loads((folder / "resumed.json").read_text())
    assert [t["number"] for t in new["trials"]] == [0, 1, 2, 3]
    for a, b in zip(old["trials"], new["trials"]):
        assert (a["chain"], a["params"], a["status"]) == (b["chain"], b["params"], b["status"])
        assert b["replayed"] is True
    assert new["trials"][3]["status"] in STATUSES
    # the winner was re-made from its chain (resumed trials leave no files) and re-timed
    assert (folder / "resumed.onnx").read_bytes() == (folder / "best.onnx").read_bytes() or new["chosen"] == 3


def test_no_model_passing_writes_the_report_but_no_model(tmp_path, cli):
    (tmp_path / "space.toml").write_text(SPACE)
    result = cli(
        "tune",
        MLP,
        "--data",
        MLP_DATA,
        "--gate",
        "size_ratio<=0.01",
        "--space",
        tmp_path / "space.toml",
        "--trials",
        1,
        "-o",
        tmp_path / "best.onnx",
        "--report",
        tmp_path / "tune.json",
        "--save-recipe",
        tmp_path / "b.toml",
    )
    assert result.exit_code is ExitCode.GATE_FAILED, result
    report = json.loads((tmp_path / "tune.json").read_text())
    assert report["chosen"] is None and report["trials"][0]["status"] == "ok" and not report["trials"][0]["passed"]
    assert not (tmp_path / "best.onnx").exists() and not (tmp_path / "b.toml").exists()
    assert "no model passed every gate" in result.stdout


def test_timeouts_are_recorded_and_the_search_goes_on(tmp_path, cli):
    (tmp_path / "space.toml").write_text(SPACE)
    result = cli(
        "tune",
        MLP,
        "--data",
        MLP_DATA,
        "--gate",
        "cosine>=0.99",
        "--space",
        tmp_path / "space.toml",
        "--trials",
        2,
        "--jobs",
        2,
        "--trial-timeout",
        "0.3s",
        "-o",
        tmp_path / "best.onnx",
        "--report",
        tmp_path / "tune.json",
    )
    assert result.exit_code == 1, result
    report = json.loads((tmp_path / "tune.json").read_text())
    assert [t["status"] for t in report["trials"]] == ["timeout", "timeout"]
    assert all("no result within" in t["error"] for t in report["trials"])


def test_a_trial_over_its_memory_limit_fails_without_ending_anything(tmp_path):
    spec = {
        "number": 0,
        "chain": [{"plugin": "int_quant", "options": {"mode": "storage"}}],
        "model": str(MLP),
        "data": str(MLP_DATA),
        "input_shapes": {},
        "seed": 0,
        "gates": ["cosine>=0.99"],
        "workdir": str(tmp_path),
        "keep": True,
    }
    result = run_isolated(spec, 120, 64 * 2**20)
    assert result["status"] == "failed"
    assert "memory" in result["error"].lower() or "crashed" in result["error"]
    ok = run_isolated(spec, 300, None)
    assert ok["status"] == "ok" and ok["gates_passed"] and ok["metrics"]["cosine"] > 0.999


def test_ctrl_c_stops_cleanly_and_keeps_what_was_found(tmp_path):
    # thousands of distinct points: SPACE's two are tried within a second and the rest of the 40 trials
    # repeat them at no cost, so on a loaded machine the search could end before the signal arrives
    (tmp_path / "space.toml").write_text(SPACE + "min_size = { low = 0, high = 4096, step = 1 }\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onnxshrink",
            "tune",
            str(MLP),
            "--data",
            str(MLP_DATA),
            "--gate",
            "cosine>=0.99",
            "--space",
            str(tmp_path / "space.toml"),
            "--trials",
            "2000",
            "-o",
            str(tmp_path / "best.onnx"),
            "--report",
            str(tmp_path / "tune.json"),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        # a shell without job control starts background jobs (`make test &`) with SIGINT ignored, and a
        # Python started with it ignored never raises KeyboardInterrupt: give the run a terminal's default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # off a terminal the first finished trial prints a progress line at once; with 2000 trials to go
        # the search is still running after at most a minute without one, whatever delays the line
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                line = proc.stderr.readline()
                if not line or "trials done" in line:
                    break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0
    report = json.loads((tmp_path / "tune.json").read_text())
    assert report["interrupted"] is True and 1 <= len(report["trials"]) < 2000
    assert report["chosen"] is not None and (tmp_path / "best.onnx").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gate", "cosine>>0.99"], "cosine>>0.99"),
        (["--gate", "cosine>=0.99", "--time", "soon"], "--time 'soon'"),
        (["--gate", "cosine>=0.99", "--plugin", "int_quant:bits=3"], "must be one of 8, 4, 2"),
        (["--gate", "cosine>=0.99", "--space", "missing.toml"], "space file not found"),
        (["--gate", "cosine>=0.99", "--resume", "missing.json"], "--resume missing.json: file not found"),
        (["--gate", "cosine>=0.99", "--data", "missing.npz"], "missing.npz"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, cli, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("tune", MLP, *args, "-o", tmp_path / "best.onnx", "--report", tmp_path / "tune.json")
    assert result.exit_code == 2, result
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_missing_model_and_missing_gate(tmp_path, cli):
    result = cli("tune", tmp_path / "nope.onnx", "--gate", "cosine>=0.99")
    assert result.exit_code == 2 and "nope.onnx" in result.stderr
    result = cli("tune", MLP)
    assert result.exit_code == 2 and "--gate" in result.stderr


def test_ray_missing_is_a_clear_usage_error(tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if onnxshrink[ray] were not installed
    result = cli("tune", MLP, "--data", MLP_DATA, "--gate", "cosine>=0.99", "--ray", "-o", tmp_path / "b.onnx")
    assert result.exit_code == 2, result
    assert "pip install 'onnxshrink[ray]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b.onnx").exists()
