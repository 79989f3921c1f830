"""The command line end to end on the models in models/: shrink, plugins, inspect, bench, gate, recipes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxshrink.errors import ExitCode
from tests.support.files import MODELS, folder_digest, sha256

CNN, MLP = MODELS / "cnn.onnx", MODELS / "mlp.onnx"
CNN_DATA, MLP_DATA = MODELS / "cnn_eval.npz", MODELS / "mlp_eval.npz"


def run_ort(path, data_path):
    data = np.load(data_path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": data["input"]})[0], data["labels"]


def test_shrink_cnn_with_global_pruning(cli, tmp_path):
    before = sha256(CNN)
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    result = cli(
        CNN, "--plugin", "weight_prune:sparsity=0.7,scope=global", "-o", out, "--report", report, "--data", CNN_DATA
    )
    assert result.exit_code is ExitCode.OK, result
    assert sha256(CNN) == before
    data = json.loads(report.read_text())
    [step] = data["steps"]
    assert step["plugin"] == "weight_prune" and step["stats"]["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert data["output"]["size"]["nonzeros"] < 0.35 * data["input"]["size"]["nonzeros"]
    assert (
        data["output"]["size"]["compressed_bytes"] < 0.6 * data["input"]["size"]["compressed_bytes"]
    )  # zeros compress
    assert data["validation"]["data"]["synthetic"] is False
    assert data["validation"]["latency"]["cpu"]["status"] == "ok"
    logits, labels = run_ort(out, CNN_DATA)  # the pruned model still runs and still classifies
    assert logits.shape == (len(labels), 10)
    assert np.mean(logits.argmax(1) == labels) == pytest.approx(data["validation"]["fidelity"]["accuracy"]["candidate"])
    assert "sparsity" in result.stdout and "Latency" in result.stdout


def test_default_output_beside_the_input(cli, tmp_path):
    model = tmp_path / "mlp.onnx"
    model.write_bytes(MLP.read_bytes())
    result = cli(model, "--plugin", "weight_prune", "--no-validate", "-q")
    assert result.exit_code == 0, result
    assert (tmp_path / "mlp.shrunk.onnx").exists() and result.stdout == ""


def test_same_seed_gives_identical_bytes(cli, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}.onnx"
        result = cli(
            CNN,
            "--plugin",
            "weight_prune:sparsity=0.5",
            "--plugin",
            "weight_prune:threshold=0.05",
            "-o",
            out,
            "--no-validate",
            "--seed",
            "7",
        )
        assert result.exit_code == 0, result
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_chain_runs_in_order(cli, tmp_path):
    report = tmp_path / "r.json"
    result = cli(
        MLP,
        "--plugin",
        "weight_prune:sparsity=0.3",
        "--plugin",
        "weight_prune:sparsity=0.6",
        "-o",
        tmp_path / "o.onnx",
        "--report",
        report,
        "--no-validate",
    )
    assert result.exit_code == 0, result
    steps = json.loads(report.read_text())["steps"]
    assert [s["options"]["sparsity"] for s in steps] == [0.3, 0.6]
    assert steps[1]["stats"]["tensors"][0]["sparsity_before"] == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--plugin", "nope"], ["unknown plugin 'nope'", "known plugins:", "weight_prune"]),
        (["--plugin", "weight_prune:sparsity=2"], ["plugin 'weight_prune'", "'sparsity'", "between"]),
        (["--plugin", "weight_prune:scope=everything"], ["'scope'", "one of layer, global"]),
        (["--plugin", "weight_prune:bogus=1"], ["unknown option 'bogus'"]),
        ([], ["no --plugin given"]),
        (["--plugin", "weight_prune", "--gate", "speed>=2"], ["unknown metric 'speed'", "known metrics"]),
        (["--plugin", "weight_prune", "--providers", "cpu,tpu"], ["tpu"]),
        (["--plugin", "weight_prune", "--data", "missing.npz"], ["missing.npz"]),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_nothing_written(cli, tmp_path, args, fragments):
    out = tmp_path / "o.onnx"
    result = cli(CNN, *args, "-o", out)
    assert result.exit_code == 2, result
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_data_with_a_wrong_input_name_is_exit_2(cli, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((4, 1, 8, 8), np.float32))
    result = cli(CNN, "--plugin", "weight_prune", "--data", bad, "-o", tmp_path / "o.onnx")
    assert result.exit_code is ExitCode.USAGE and "'input'" in result.stderr and "bad.npz" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_invalid_model_is_exit_2_and_traceback_only_on_request(cli_subprocess, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    result = cli_subprocess(bad, "--plugin", "weight_prune")
    assert result.exit_code == 2 and str(bad) in result.stderr and "Traceback" not in result.stderr
    result = cli_subprocess(bad, "--plugin", "weight_prune", "--traceback")
    assert result.exit_code == 2 and "Traceback" in result.stderr
    assert folder_digest(tmp_path) == {"bad.onnx": sha256(bad)}


def test_gate_pass_fail_junit_and_markdown(cli, tmp_path):
    junit, md, report = tmp_path / "gate.xml", tmp_path / "s.md", tmp_path / "r.json"
    common = [
        "--plugin",
        "weight_prune:sparsity=0.3,scope=global",
        "--data",
        CNN_DATA,
        "-o",
        tmp_path / "o.onnx",
        "--junit",
        junit,
        "--markdown",
        md,
        "--report",
        report,
    ]
    passing = cli(
        CNN, *common, "--gate", "top1_agreement>=0.9", "--gate", "size_ratio<=1.0", "--gate", "accuracy_drop<=0.05"
    )
    assert passing.exit_code is ExitCode.OK, passing
    assert json.loads(report.read_text())["gate"]["passed"] is True
    failing = cli(CNN, *common, "--gate", "cosine>=0.9999999", "--gate", "size_ratio<=0.5")
    assert failing.exit_code is ExitCode.GATE_FAILED, failing
    assert (tmp_path / "o.onnx").exists()  # the candidate is kept for inspection
    suite = ET.parse(junit).getroot()
    cases = suite.findall(".//testcase")
    assert [c.get("name") for c in cases] == ["cosine>=0.9999999", "size_ratio<=0.5"]
    assert all(c.find("failure") is not None for c in cases)
    assert "FAIL" in md.read_text().upper()


def test_gate_on_unavailable_provider_fails_unless_allowed(cli, tmp_path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    common = [
        MLP,
        "--plugin",
        "weight_prune",
        "--data",
        MLP_DATA,
        "-o",
        tmp_path / "o.onnx",
        "--repeats",
        "3",
        "--gate",
        "latency_ratio[cuda]<=1.5",
    ]
    assert cli(*common).exit_code == 1
    result = cli(*common, "--allow-unavailable", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result
    [check] = json.loads((tmp_path / "r.json").read_text())["gate"]["checks"]
    assert check["status"] == "unavailable" and "cuda" in check["reason"]


def test_gate_command_on_two_models(cli, tmp_path):
    candidate = tmp_path / "c.onnx"
    assert cli(MLP, "--plugin", "weight_prune:sparsity=0.2", "-o", candidate, "--no-validate").exit_code == 0
    ok = cli("gate", MLP, candidate, "--data", MLP_DATA, "--gate", "top1_agreement>=0.9", "--repeats", "3")
    assert ok.exit_code is ExitCode.OK, ok
    bad = cli("gate", MLP, candidate, "--data", MLP_DATA, "--gate", "cosine>=0.9999999", "--repeats", "3")
    assert bad.exit_code is ExitCode.GATE_FAILED, bad


def test_recipe_with_cli_override(cli, tmp_path):
    recipe = tmp_path / "shrink.toml"
    recipe.write_text(
        f"""
model = "{MLP}"
output = "out/mlp.small.onnx"
[[steps]]
plugin = "weight_prune"
options = {{ sparsity = 0.4, scope = "global" }}
[data]
path = "{MLP_DATA}"
[validate]
repeats = 3
[gate]
checks = ["top1_agreement >= 0.8"]
[report]
json = "out/report.json"
"""
    )
    result = cli("--recipe", recipe, "--seed", "3")
    assert result.exit_code == 0, result
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["seed"] == 3 and report["steps"][0]["options"]["sparsity"] == 0.4
    assert (tmp_path / "out" / "mlp.small.onnx").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "x.onnx"\n[[steps]]\nplugn = "weight_prune"\n')
    result = cli("--recipe", bad)
    assert result.exit_code == 2 and "plugn" in result.stderr


def test_bench_one_and_two_models(cli, tmp_path):
    one = cli("bench", MLP, "--data", MLP_DATA, "--json", "--repeats", "3")
    assert one.exit_code == 0, one
    data = json.loads(one.stdout)
    assert data["latency"]["cpu"]["status"] == "ok" and data["size"]["params"] > 0
    two = cli("bench", MLP, MLP, "--data", MLP_DATA, "--json", "--repeats", "3")
    fidelity = json.loads(two.stdout)["validation"]["fidelity"]
    assert fidelity["cosine"] == pytest.approx(1.0) and fidelity["top1_agreement"] == 1.0


def test_synthetic_data_warns(cli, tmp_path):
    result = cli(
        MLP, "--plugin", "weight_prune", "-o", tmp_path / "o.onnx", "--repeats", "3", "--report", tmp_path / "r.json"
    )
    assert result.exit_code == 0, result
    validation = json.loads((tmp_path / "r.json").read_text())["validation"]
    assert validation["data"]["synthetic"] is True and "synthetic" in result.stdout


def test_plugins_listing(cli):
    result = cli("plugins", "--json")
    assert result.exit_code == 0
    methods = {m["name"]: m for m in json.loads(result.stdout)["methods"]}
    prune = methods["weight_prune"]
    assert prune["kind"] == "prune" and prune["distribution"] == "onnxshrink"
    assert {o["name"] for o in prune["options"]} >= {"sparsity", "threshold", "scope", "min_size"}
    text = cli("plugins")
    assert "weight_prune" in text.stdout and "sparsity" in text.stdout


def test_plugins_listing_shows_what_tune_searches(cli, registry):
    """--json carries each method's declared search space; the table says it in one line per method."""
    methods = {m["name"]: m for m in json.loads(cli("plugins", "--json").stdout)["methods"]}
    for name, info in registry.methods.items():
        assert methods[name]["search_space"] == [t.describe() for t in info.cls.search_space]
        assert methods[name]["search_fixed"] == dict(info.cls.search_fixed)
    assert methods["fp16_storage"]["search_space"] == []  # the example plugin declares none
    searched = [name for name, m in methods.items() if m["search_space"]]
    lines = [line for line in cli("plugins").stdout.splitlines() if "tune searches:" in line]
    assert len(lines) == len(searched) >= 7
    assert any("sparsity 0.2..0.9 (step 0.05)" in line for line in lines)
    flat = " ".join(cli("plugins").stdout.split())  # long lines wrap
    assert "target_cosine in {0.995, 0.99, 0.98} (at its defaults only)" in flat
    assert [name for name, m in methods.items() if m["lossless"]] == ["int_pack", "short_names"]
    assert cli("plugins").stdout.count("tune ends every chain with it") == 2


def test_inspect(cli):
    result = cli("inspect", CNN, "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    model = onnx.load(CNN)
    assert info["ops"]["Conv"] == sum(n.op_type == "Conv" for n in model.graph.node)
    assert info["inputs"] == [{"name": "input", "dtype": "float", "shape": ["batch", 1, 8, 8]}]
    assert info["size"]["file_bytes"] == CNN.stat().st_size and info["opsets"]["ai.onnx"] == 17
    assert "Conv" in cli("inspect", CNN).stdout


def test_python_m_help(cli_subprocess):
    result = cli_subprocess("--help")
    assert result.exit_code == 0 and "onnxshrink MODEL --plugin" in result.stdout
    for command in ("shrink", "plugins", "inspect", "bench", "gate"):
        assert command in result.stdout
    shrink_help = cli_subprocess("shrink", "--help")
    for flag in (
        "--plugin",
        "--output",
        "--report",
        "--seed",
        "--quiet",
        "--traceback",
        "--data",
        "--gate",
        "--recipe",
        "--no-validate",
    ):
        assert flag in shrink_help.stdout
