"""The real-model zoo for tests: where it is, and each (model, chain) run once per session.

The zoo folder comes from ``ONNXSHRINK_ZOO`` (default ``<repo>/.zoo``; ``make zoo`` fetches it). The
run-and-judge code is the zoo benchmark's (``benchmarks/bench_zoo.py``), so the tests and the table
measure the same way: the CLI in a subprocess with the calibration half as ``--data``, the output
judged against the original on the evaluation half.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_bench_zoo():
    name = "onnxshrink_bench_zoo"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "bench_zoo.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


bench_zoo = _load_bench_zoo()

RUN_TIMEOUT_S = 900  # one shrink run; a run past it is a failure ("timeout"), not a hang

# The zoo's models (../shared/zoo/models.json); used to name the tests when the zoo is not fetched.
KNOWN_ZOO_MODELS = (
    "arabic_romanizer_encoder",
    "basic_pitch",
    "captcha_crnn",
    "centerface",
    "g2p_id_bert",
    "g2p_id_lstm_decoder",
    "mrz_unet",
    "open_nsfw",
    "rivagan_decoder",
    "rivagan_encoder",
    "swift_f0",
    "vfl_dvector_int8",
)


def zoo_models() -> list[str]:
    """The models to parametrize over: those fetched, else the known names (each test then skips)."""
    return bench_zoo.zoo_model_names(bench_zoo.zoo_dir()) or list(KNOWN_ZOO_MODELS)


class ZooRuns:
    """Runs each (model, chain) once and keeps its run record and judgement for the whole session."""

    def __init__(self, zoo: Path, folder: Path, timeout_s: float):
        self.zoo, self.folder, self.timeout_s = zoo, folder, timeout_s
        self._models: dict[str, object] = {}
        self._calibration: dict[str, Path] = {}
        self._done: dict[tuple[str, tuple[str, ...]], tuple[dict, dict]] = {}

    def model(self, name: str):
        if name not in self._models:
            if name not in bench_zoo.zoo_model_names(self.zoo):
                pytest.skip(f"zoo model {name!r} is not in {self.zoo} (run `make zoo`)")
            self._models[name] = bench_zoo.load_zoo_model(self.zoo, name)
            self._calibration[name] = self._models[name].write_calibration(self.folder / f"{name}.calibration.npz")
        return self._models[name]

    def run(self, name: str, *steps: str) -> tuple[dict, dict]:
        """(run record, judgement) of ``onnxshrink MODEL --plugin STEP ...`` (see bench_zoo.run_chain/judge)."""
        key = (name, steps)
        if key not in self._done:
            model = self.model(name)
            folder = self.folder / f"run{len(self._done)}"
            record = bench_zoo.run_chain(model, bench_zoo.Chain(steps), self._calibration[name], folder, self.timeout_s)
            judged = bench_zoo.judge(model, record["output"], latency=False)
            self._done[key] = (record, judged)
        return self._done[key]


@pytest.fixture(scope="session")
def zoo() -> Path:
    folder = bench_zoo.zoo_dir()
    if not bench_zoo.zoo_model_names(folder):
        pytest.skip(f"no zoo at {folder}: run `make zoo` or set ONNXSHRINK_ZOO")
    return folder


@pytest.fixture(scope="session")
def zoo_runs(zoo, tmp_path_factory) -> ZooRuns:
    return ZooRuns(zoo, tmp_path_factory.mktemp("zoo-runs"), RUN_TIMEOUT_S)
