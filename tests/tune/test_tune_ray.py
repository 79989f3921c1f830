"""tune on a real Ray runtime started here (2 CPUs, no dashboard, 127.0.0.1): the model and data go
through the object store, trials run as Ray tasks, the report has the same shape as on one machine."""

from __future__ import annotations

import pytest

from onnxshrink.tune import TuneJob, tune
from tests.support.files import MODELS

ray = pytest.importorskip(
    "ray", reason="Ray is not installed (pip install 'onnxshrink[ray]'); the Ray backend is not tested"
)

MLP, MLP_DATA = MODELS / "mlp.onnx", MODELS / "mlp_eval.npz"


@pytest.fixture(scope="module")
def ray_runtime():
    """A runtime whose workers (and this process) have a temporary folder of their own, so the check
    that the nodes' copies were removed sees no other test run's copies (/tmp is shared)."""
    import os
    import shutil
    import tempfile

    private = tempfile.mkdtemp(prefix="ostr")  # short: Ray puts its sockets under it
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = private, private
    try:
        # address="local": a runtime of the test's own, whatever Ray cluster may run on the machine
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False
        )
        yield
        ray.shutdown()
    finally:
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        tempfile.tempdir = saved_tempdir
        shutil.rmtree(private, ignore_errors=True)


def test_tune_on_ray_matches_the_local_report(ray_runtime, tmp_path):
    space = tmp_path / "space.toml"
    space.write_text('chains = [["int_quant"]]\n[int_quant]\nmode = "storage"\nbits = [8, 4]\n')
    job = TuneJob(
        model=MLP,
        data=MLP_DATA,
        gates=["cosine>=0.99", "latency_ratio[cpu]<=3.0"],
        trials=2,
        jobs=2,
        ray=True,
        space_file=space,
        output=tmp_path / "best.onnx",
        report=tmp_path / "tune.json",
        save_recipe=tmp_path / "best.toml",
    )
    report, code = tune(job)
    assert code == 0
    assert report["backend"]["name"] == "ray" and report["backend"]["jobs"] == 2
    assert report["backend"]["timing_node"]  # one worker timed every candidate
    assert [t["status"] for t in report["trials"]] == ["ok", "ok"]
    chosen = next(t for t in report["trials"] if t["number"] == report["chosen"])
    assert chosen["passed"] and chosen["timed"]
    # the start points: 4 bits in blocks of 32, then of 128; the smallest that passed is chosen
    assert [t["chain"][0]["options"]["block_size"] for t in report["trials"]] == [32, 128]
    assert chosen["metrics"]["file_bytes"] == min(t["metrics"]["file_bytes"] for t in report["trials"] if t["passed"])
    # the candidate came back through the object store, byte for byte what a local shrink makes
    from click.testing import CliRunner

    from onnxshrink.cli import main

    result = CliRunner().invoke(
        main, ["--recipe", str(tmp_path / "best.toml"), "-o", str(tmp_path / "rebuilt.onnx"), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rebuilt.onnx").read_bytes() == (tmp_path / "best.onnx").read_bytes()
    assert ray.is_initialized()  # tune joined the runtime it found and left it running
    import tempfile
    from pathlib import Path

    assert not list(Path(tempfile.gettempdir()).glob("onnxshrink_ray_*"))  # the nodes' copies were removed
