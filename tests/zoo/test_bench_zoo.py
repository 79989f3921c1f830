"""The zoo benchmark's machinery on a tiny zoo built from models/ (fast; runs in `make test`)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from tests.zoo.conftest import ROOT, bench_zoo

N_FEEDS = 8


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """A zoo folder with the digits MLP and 8 stacked feeds of 4 samples each; ONNXSHRINK_ZOO points at it."""
    zoo = tmp_path / "zoo"
    (zoo / "models").mkdir(parents=True)
    (zoo / "data").mkdir()
    shutil.copyfile(ROOT / "models" / "mlp.onnx", zoo / "models" / "mlp.onnx")
    with np.load(ROOT / "models" / "mlp_eval.npz") as z:
        x = z["input"][: N_FEEDS * 4].astype(np.float32)
    np.savez(zoo / "data" / "mlp.npz", input=x.reshape(N_FEEDS, 4, -1))
    (zoo / "models" / "orphan.onnx").write_bytes(b"")  # no feeds: not a zoo model
    monkeypatch.setenv("ONNXSHRINK_ZOO", str(zoo))
    return zoo


def test_finds_the_zoo_from_the_environment(tiny_zoo):
    assert bench_zoo.zoo_dir() == tiny_zoo
    assert bench_zoo.zoo_model_names(tiny_zoo) == ["mlp"]
    assert bench_zoo.zoo_model_names(tiny_zoo / "missing") == []


def test_calibration_file_holds_only_the_first_half(tiny_zoo, tmp_path):
    model = bench_zoo.load_zoo_model(tiny_zoo, "mlp")
    path = model.write_calibration(tmp_path / "calib.npz")
    with np.load(path) as z:
        assert z.files == ["input"]
        np.testing.assert_array_equal(z["input"], model.arrays["input"][: N_FEEDS // 2])
    evaluation = model.evaluation_feeds()
    assert len(evaluation) == N_FEEDS // 2
    np.testing.assert_array_equal(evaluation[0]["input"], model.arrays["input"][N_FEEDS // 2])


def test_a_real_run_is_judged_on_the_evaluation_half(tiny_zoo, tmp_path):
    model = bench_zoo.load_zoo_model(tiny_zoo, "mlp")
    calib = model.write_calibration(tmp_path / "calib.npz")
    record = bench_zoo.run_chain(model, bench_zoo.Chain(("int_quant:mode=storage",)), calib, tmp_path / "run", 600)
    assert (record["status"], record["exit_code"], record["error"]) == ("ok", 0, None)
    assert record["report"]["steps"][0]["plugin"] == "int_quant"
    judged = bench_zoo.judge(model, record["output"])
    assert judged["valid"] and judged["outputs_mismatch"] is None
    assert judged["size_ratio"] < 0.5
    assert judged["worst_output"] == "logits"
    assert 0.99 < judged["worst_cosine"] <= 1.0 + 1e-9
    assert judged["cosine"]["logits"]["feed"] in range(N_FEEDS // 2)
    assert judged["latency_ratio"] > 0


def test_failed_and_timed_out_runs_are_rows(tiny_zoo, tmp_path):
    model = bench_zoo.load_zoo_model(tiny_zoo, "mlp")
    calib = model.write_calibration(tmp_path / "calib.npz")
    bad = bench_zoo.run_chain(model, bench_zoo.Chain(("int_quant:bits=3",)), calib, tmp_path / "bad", 600)
    assert bad["exit_code"] == 2 and bad["status"] == "exit 2" and bad["output"] is None
    assert "bits" in bad["error"]
    assert bench_zoo.judge(model, bad["output"]) == {"valid": False}
    slow = bench_zoo.run_chain(model, bench_zoo.Chain(("int_quant",)), calib, tmp_path / "slow", 0.01)
    assert slow["status"] == "timeout" and slow["exit_code"] is None and slow["output"] is None
    assert bench_zoo.format_row({"model": "mlp", "chain": "int_quant", **slow}).split(" | ")[2] == "timeout"


def test_an_output_that_changes_an_output_shape_is_caught(tiny_zoo, tmp_path):
    import onnx
    from onnx import helper

    model = bench_zoo.load_zoo_model(tiny_zoo, "mlp")
    proto = onnx.load(model.path)
    logits = proto.graph.output[0].name
    proto.graph.node[-1].output[0] = "pre"
    proto.graph.node.append(helper.make_node("Flatten", ["pre"], [logits], axis=0))
    proto.graph.output[0].type.tensor_type.shape.Clear()
    changed = tmp_path / "changed.onnx"
    onnx.save(proto, changed)
    judged = bench_zoo.judge(model, changed, latency=False)
    assert judged["valid"]
    assert "declared outputs" in judged["outputs_mismatch"]


def test_cosine_and_worst_per_feed():
    a = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert bench_zoo.cosine(a, a) == pytest.approx(1.0)
    assert bench_zoo.cosine(a, -a) == pytest.approx(-1.0)
    assert bench_zoo.cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert bench_zoo.cosine(np.zeros(3), a) == 0.0
    assert math.isnan(bench_zoo.cosine(a, np.array([1.0, np.nan, 3.0])))
    base = [{"y": a, "ids": np.array([1, 2])}, {"y": a, "ids": np.array([1, 2])}, {"y": a, "ids": np.array([1, 2])}]
    cand = [
        {"y": a, "ids": np.array([1, 2])},
        {"y": np.array([1.0, 2.0, -3.0]), "ids": np.array([1, 2])},
        {"y": a, "ids": np.array([0, 0])},
    ]
    worst = bench_zoo.worst_cosines(base, cand)
    assert list(worst) == ["y"]  # integer outputs get no cosine
    assert worst["y"]["feed"] == 1 and worst["y"]["worst"] == pytest.approx(bench_zoo.cosine(a, cand[1]["y"]))
    cand[2]["y"] = np.array([np.nan, 0.0, 0.0])
    assert bench_zoo.worst_cosines(base, cand)["y"]["feed"] == 2  # nan is the worst of all


def test_chains_and_markdown():
    labels = [c.label for c in bench_zoo.default_chains()]
    assert labels[:2] == ["int_quant", "weight_prune"]
    assert {
        "gptq",
        "binarize",
        "sparse_store",
        "weight_prune > sparse_store",
        "int_quant:bits=4",
        "gptq:bits=4",
        "weight_prune > int_quant",
    } <= set(labels)
    assert [c.label for c in bench_zoo.default_chains(["sparse_store"])] == [
        "sparse_store",
        "weight_prune > sparse_store",
    ]
    row = {
        "model": "m",
        "chain": "a > b",
        "status": "exit 3",
        "exit_code": 3,
        "seconds": 1.0,
        "error": "x | y",
        "valid": False,
    }
    table = bench_zoo.markdown_table([row]).splitlines()
    assert table[0].startswith("| model | method / recipe | exit | valid | size")
    assert table[2] == "| m | a > b | 3 | no | - | - | - | - | 1.0 | x \\| y |"


def test_main_without_a_zoo_says_it_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ONNXSHRINK_ZOO", str(tmp_path / "nothing"))
    assert bench_zoo.main([]) == 0
    assert capsys.readouterr().out.startswith("zoo: skipped (no models in")


def test_main_writes_json_and_markdown(tiny_zoo, tmp_path, capsys):
    out_json, out_md = tmp_path / "zoo.json", tmp_path / "zoo.md"
    assert bench_zoo.main(["--methods", "int_quant:bits=4", "--json", str(out_json), "--markdown", str(out_md)]) == 0
    import json

    rows = json.loads(out_json.read_text())
    assert [(r["model"], r["chain"]) for r in rows] == [("mlp", "int_quant:bits=4")]
    assert out_md.read_text().count("\n") == 3
    again = tmp_path / "again.md"
    assert bench_zoo.main(["--from-json", str(out_json), "--markdown", str(again)]) == 0
    assert again.read_text() == out_md.read_text()
    assert bench_zoo.main(["--models", "nope"]) == 2
