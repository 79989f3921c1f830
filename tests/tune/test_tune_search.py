"""tune's search economy: a repeated configuration reuses the earlier trial (no process), the start
points come from the declared spaces and the defaults, and a latency failure on timings flagged too
noisy is timed again before the candidate is rejected. Real optuna, real trials on the digits MLP."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from onnxshrink import Method, Option, Tunable
from onnxshrink.tune import TuneJob, tune
from onnxshrink.tune import run as tune_run
from onnxshrink.tune.backends import LocalBackend
from onnxshrink.tune.search import Search
from onnxshrink.tune.space import CHAIN_PARAM, MethodSpace, SearchSpace, default_chains
from tests.support.files import MODELS

MLP, MLP_DATA = MODELS / "mlp.onnx", MODELS / "mlp_eval.npz"
ONE_CONFIG = 'chains = [["int_quant:default"]]\n[int_quant]\nmode = "storage"\nbits = 8\n'


class CountingBackend(LocalBackend):
    """The real local backend, counting the trial processes it starts."""

    def __init__(self, jobs: int):
        super().__init__(jobs)
        self.started: list[int] = []

    def run_batch(self, specs, timeout_s, memory_bytes):
        self.started += [s["number"] for s in specs]
        return super().run_batch(specs, timeout_s, memory_bytes)


@pytest.fixture
def counting(monkeypatch):
    made: list[CountingBackend] = []

    def make(job, checked):
        made.append(CountingBackend(job.jobs or 1))
        return made[-1]

    monkeypatch.setattr(tune_run, "_make_backend", make)
    return made


def _one_config_job(tmp_path: Path, **kw) -> TuneJob:
    (tmp_path / "space.toml").write_text(ONE_CONFIG)
    return TuneJob(
        model=MLP,
        data=MLP_DATA,
        gates=["cosine>=0.99"],
        space_file=tmp_path / "space.toml",
        output=tmp_path / "best.onnx",
        report=tmp_path / "tune.json",
        **kw,
    )


def test_a_repeated_configuration_reuses_the_earlier_trial(tmp_path, counting):
    report, code = tune(_one_config_job(tmp_path, trials=3, jobs=2, time_s=None))
    assert code == 0
    first, *repeats = report["trials"]
    assert counting[0].started == [0]  # one process: trial 1 repeats trial 0 in the same batch, trial 2 in the next
    assert "same_as" not in first and first["status"] == "ok" and first["seconds"] > 0
    for t in repeats:
        assert t["same_as"] == 0 and t["seconds"] == 0.0 and t["status"] == "ok"
        assert t["metrics"] == {**first["metrics"], "latency_ratio": None}
        assert t["gates_passed_untimed"] and not t["timed"] and not t["passed"]
    assert report["chosen"] == 0 and first["timed"]  # the repeats are never timed or chosen


def test_the_search_stops_when_it_only_repeats_itself(tmp_path, counting, monkeypatch):
    monkeypatch.setattr(tune_run, "MAX_REPEATS_IN_A_ROW", 4)
    report, code = tune(_one_config_job(tmp_path, time_s=300))
    assert code == 0 and counting[0].started == [0]
    assert [t.get("same_as") for t in report["trials"]] == [None, 0, 0, 0, 0]


def test_the_optimizer_is_told_the_reused_result():
    space = SearchSpace({"probe": MethodSpace(_probe(), {"bits": Tunable("bits", choices=(8, 4))})}, [("probe",)])
    search = Search(space, seed=0, n_checks=1)
    number, _, _ = search.ask()
    result = {"status": "ok", "metrics": {"size_ratio": 0.3, "cosine": 0.995}, "constraints": [-0.005]}
    search.tell(number, result)
    again, _, _ = search.ask()
    search.tell(again, dict(result))
    values = [t.values for t in search.study.trials]
    assert values == [[0.3, pytest.approx(0.005)], [0.3, pytest.approx(0.005)]]


# ------------------------------------------------------------------------- start points


def _probe(kind="quantize"):
    class Probe(Method):
        """A probe."""

        name = "probe"
        options = (
            Option("bits", int, 8, "Bits.", min=2, max=8),
            Option("group", int, 0, "Group.", min=0),
            Option("mode", str, "a", "Mode.", choices=("a", "b")),
        )

        def apply(self, model, options, context):
            return {}

    Probe.kind = kind
    return Probe


def test_start_points_are_low_bits_at_the_finest_then_coarsest_size_then_the_defaults():
    cls = _probe()
    space = SearchSpace(
        {
            "probe": MethodSpace(
                cls,
                {
                    "bits": Tunable("bits", low=2, high=8),
                    "group": Tunable("group", choices=(0, 64, 16)),
                    "mode": Tunable("mode", choices=("b", "a")),
                },
            )
        },
        [("probe",)],
    )
    assert space.start_points() == [
        {CHAIN_PARAM: "probe", "probe.bits": 4, "probe.group": 16, "probe.mode": "a"},  # 4 bits, the finest groups
        {CHAIN_PARAM: "probe", "probe.bits": 4, "probe.group": 64, "probe.mode": "a"},  # 4 bits, the coarsest
        {CHAIN_PARAM: "probe", "probe.bits": 8, "probe.group": 0, "probe.mode": "a"},  # the defaults
    ]


def test_the_default_chain_comes_first_and_tries_each_default_only_choice():
    cls = _probe()
    cls.options = (*cls.options, Option("target", float, 0.9, "Target.", min=0.0, max=1.0))
    tunables = {
        "bits": Tunable("bits", choices=(8, 4), where="both"),
        "target": Tunable("target", choices=(0.9, 0.8), where="default"),
        "group": Tunable("group", choices=(0, 64)),
    }
    space = SearchSpace({"probe": MethodSpace(cls, tunables)}, [("probe:default",), ("probe",)])
    assert space.start_points() == [
        {CHAIN_PARAM: "probe:default", "probe.bits": 8, "probe.target": 0.9},  # the baseline: the defaults
        {CHAIN_PARAM: "probe:default", "probe.bits": 4, "probe.target": 0.9},  # the defaults at 4 bits
        {CHAIN_PARAM: "probe", "probe.bits": 4, "probe.group": 64},  # the low-bit point (only positive sizes)
        {CHAIN_PARAM: "probe:default", "probe.bits": 8, "probe.target": 0.8},  # each default-only choice
        {CHAIN_PARAM: "probe:default", "probe.bits": 4, "probe.target": 0.8},  # ... and at 4 bits
        {CHAIN_PARAM: "probe", "probe.bits": 8, "probe.group": 0},  # the starting values
    ]
    assert space.methods["probe"].searched(as_default=True) == ["bits", "target"]
    assert space.methods["probe"].searched() == ["bits", "group"]


def test_no_low_bit_start_point_where_bits_cannot_be_four_or_the_method_does_not_quantize():
    cls = _probe()
    no_four = SearchSpace({"probe": MethodSpace(cls, {"bits": Tunable("bits", choices=(8, 2))})}, [("probe",)])
    assert no_four.start_points() == [{CHAIN_PARAM: "probe", "probe.bits": 8}]
    pruning = MethodSpace(_probe(kind="prune"), {"bits": Tunable("bits", low=2, high=8)})
    pruner = SearchSpace({"probe": pruning}, [("probe",)])
    assert pruner.start_points() == []


def test_builtin_start_points_try_each_quantizer_at_4_bits(registry_space):
    # int_pack and short_names are lossless: they end every chain; the points below are read without them
    end = "+int_pack+short_names"
    points = registry_space.start_points()
    assert all(p[CHAIN_PARAM].endswith(end) for p in points)
    points = [{**p, CHAIN_PARAM: p[CHAIN_PARAM].removesuffix(end)} for p in points]
    assert points[0] == {CHAIN_PARAM: "int_quant:default", "int_quant.bits": 8, "int_quant.target_cosine": 0.995}
    assert {CHAIN_PARAM: "int_quant:default", "int_quant.bits": 8, "int_quant.target_cosine": 0.99} in points
    # then int_quant's default at 4 bits (mode=auto keeps sensitive layers wider): the cheap low-bit point
    assert points[1] == {CHAIN_PARAM: "int_quant:default", "int_quant.bits": 4, "int_quant.target_cosine": 0.995}
    # each default-only fidelity target at the default bits, then at 4 bits (the smaller of the two)
    targets = [p for p in points if p[CHAIN_PARAM] == "int_quant:default" and p["int_quant.target_cosine"] != 0.995]
    assert [(p["int_quant.bits"], p["int_quant.target_cosine"]) for p in targets] == [
        (8, 0.99),
        (8, 0.98),
        (4, 0.99),
        (4, 0.98),
    ]
    gptq_4 = {CHAIN_PARAM: "gptq", "gptq.bits": 4, "gptq.group_size": 32, "gptq.bias_correction": True}
    slow_default = min(i for i, p in enumerate(points) if p[CHAIN_PARAM] == "binarize")
    assert points.index(gptq_4) < slow_default  # the low-bit points come before the slow defaults
    assert {CHAIN_PARAM: "float16", "float16.min_size": 16} in points
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)  # no point twice
    four_bit = [
        p for p in points if any(k.endswith(".bits") and v == 4 for k, v in p.items()) and ":" not in p[CHAIN_PARAM]
    ]
    assert {p[CHAIN_PARAM] for p in four_bit} >= {"int_quant", "gptq"}
    sizes = {(p[CHAIN_PARAM], p.get("int_quant.block_size", p.get("gptq.group_size"))) for p in four_bit}
    assert {("int_quant", 32), ("int_quant", 128), ("gptq", 32), ("gptq", 128)} <= sizes
    for p in points:  # every one is a valid option set for its method
        plugin = p[CHAIN_PARAM].replace(":default", "")
        options = {k.split(".", 1)[1]: v for k, v in p.items() if k != CHAIN_PARAM}
        registry_space.methods[plugin].cls.validate_options({**registry_space.methods[plugin].fixed, **options})


@pytest.fixture(scope="module")
def registry_space():
    from onnxshrink.plugin.registry import default_registry
    from onnxshrink.tune.space import build_space

    return build_space(default_registry())


# ------------------------------------------------------------------------- re-timing


def _latency(ratio, lo, hi, warning=None):
    return {"cpu": {"status": "ok", "ratio": ratio, "ratio_ci": [lo, hi], "rounds": 40, "warning": warning}}


NOISY = "timings too noisy to trust: (p90 - median) / median is baseline 54% (limit 25%)"


class ScriptedTiming:
    """A backend whose timings are given in advance (the decision is under test here, not the clock;
    validate/latency.py's own tests time real sessions)."""

    name, jobs = "scripted", 1

    def __init__(self, passes):
        self.passes, self.calls = list(passes), []

    def time_candidates(self, job, candidates, providers, seconds):
        self.calls.append([n for n, _ in candidates])
        latency = self.passes.pop(0)
        return {n: latency for n, _ in candidates}

    def describe(self):
        return {"name": self.name}

    def close(self):
        pass


def _retime(tmp_path, passes):
    gates = ["cosine>=0.99", "latency_ratio[cpu]<=1.0"]
    job = TuneJob(model=MLP, data=MLP_DATA, gates=gates, output=tmp_path / "o.onnx", time_s=600)
    checked = tune_run._Checked(job)
    backend = ScriptedTiming(passes)
    tuner = tune_run._Tuner(job, checked, backend, tmp_path, time.monotonic(), None)
    candidate = tmp_path / "trial_0" / "candidate.onnx"
    candidate.parent.mkdir()
    shutil.copyfile(MLP, candidate)
    tuner.trials = [
        {
            "number": 0,
            "status": "ok",
            "gates_passed_untimed": True,
            "timed": False,
            "passed": False,
            "metrics": {"file_bytes": 10, "cosine": 0.999, "size_ratio": 0.3, "latency_ratio": None},
            "gate_checks": [{"metric": "cosine", "passed": True}],
        }
    ]
    tuner.files = {0: [str(candidate)]}
    tuner._retime()
    return tuner.trials[0], backend


def test_a_latency_failure_on_noisy_timings_is_timed_again(tmp_path):
    trial, backend = _retime(tmp_path, [_latency(1.029, 1.013, 1.049, NOISY), _latency(0.998, 0.99, 1.004)])
    assert backend.calls == [[0], [0]]
    assert trial["passed"] and trial["metrics"]["latency_ratio"] == {"cpu": 0.998}
    assert [p["cpu"]["ratio"] for p in trial["latency_passes"]] == [1.029, 0.998]
    assert [c["metric"] for c in trial["gate_checks"]] == ["cosine", "latency_ratio"]  # the last timing's verdict only


def test_a_clean_latency_failure_is_final(tmp_path):
    trial, backend = _retime(tmp_path, [_latency(1.029, 1.013, 1.049)])
    assert backend.calls == [[0]] and not trial["passed"]


def test_a_slower_clean_retiming_rejects_and_noise_is_retried_at_most_twice(tmp_path):
    trial, backend = _retime(tmp_path, [_latency(1.03, 1.01, 1.05, NOISY), _latency(1.02, 1.01, 1.03)])
    assert backend.calls == [[0], [0]] and not trial["passed"]
    (tmp_path / "again").mkdir()
    trial, backend = _retime(tmp_path / "again", [_latency(1.03, 1.01, 1.05, NOISY)] * 5)
    assert len(backend.calls) == 1 + tune_run.EXTRA_TIMING_PASSES and not trial["passed"]


# ------------------------------------------------------------------------- lossless methods


def test_lossless_methods_end_every_chain_and_run_alone():
    quantizer, pruner, finisher = _probe(), _probe(kind="prune"), _probe(kind="transform")
    pruner.name, finisher.name = "pruner", "finisher"
    finisher.lossless = True
    methods = {
        "probe": MethodSpace(quantizer, {"bits": Tunable("bits", choices=(8, 4))}),
        "pruner": MethodSpace(pruner, {"group": Tunable("group", choices=(0, 64))}),
        "finisher": MethodSpace(finisher),
    }
    chains = default_chains(methods)
    assert chains == [("probe", "finisher"), ("pruner", "finisher"), ("pruner", "probe", "finisher"), ("finisher",)]
    space = SearchSpace(methods, chains)
    # the start points see through the lossless end: the quantizer's low-bit point, then its starting values
    assert space.start_points() == [
        {CHAIN_PARAM: "probe+finisher", "probe.bits": 4},
        {CHAIN_PARAM: "probe+finisher", "probe.bits": 8},
    ]


# ------------------------------------------------------------------------- methods with nothing to do


def test_methods_that_can_change_nothing_are_left_out_with_their_reason():
    from onnxshrink.errors import UsageError

    quantizer, pruner = _probe(), _probe(kind="prune")
    pruner.name = "pruner"
    quantizer.not_applicable = classmethod(lambda cls, model: "already quantized" if model == "q" else None)
    methods = {
        "probe": MethodSpace(quantizer, {"bits": Tunable("bits", choices=(8, 4))}),
        "pruner": MethodSpace(pruner, {"group": Tunable("group", choices=(0, 64))}),
    }
    space = SearchSpace(dict(methods), default_chains(methods))
    assert space.leave_out_inapplicable("float") == {} and len(space.chains) == 3
    assert space.leave_out_inapplicable("q") == {"probe": "already quantized"}
    assert space.chains == [("pruner",)] and list(space.methods) == ["pruner"]
    assert space.describe()["left_out"] == {"probe": "already quantized"}
    alone = SearchSpace({"probe": methods["probe"]}, [("probe",)])
    with pytest.raises(UsageError, match="nothing to search on this model: probe: already quantized"):
        alone.leave_out_inapplicable("q")


def test_builtin_quantizers_say_when_they_have_nothing_to_do(tmp_path):
    import onnx

    from onnxshrink.plugin.registry import default_registry

    methods = default_registry().methods
    float_model = onnx.load(MODELS / "cnn.onnx")
    for name in ("int_quant", "gptq", "float16"):
        assert methods[name].cls.not_applicable(float_model) is None
    assert "float model" in methods["requantize"].cls.not_applicable(float_model)
    # an int8-stored copy: the int quantizers and float16 have nothing left to do, requantize does
    from click.testing import CliRunner

    from onnxshrink.cli import main

    out = tmp_path / "q.onnx"
    args = [
        str(MODELS / "cnn.onnx"),
        "--plugin",
        "int_quant:mode=weights,weights_format=dequantize_linear",
        "--no-validate",
        "-o",
        str(out),
        "-q",
    ]
    assert CliRunner().invoke(main, args).exit_code == 0
    quantized = onnx.load(out)
    for name in ("int_quant", "gptq", "float16"):
        assert "already quantized" in methods[name].cls.not_applicable(quantized)
    assert methods["requantize"].cls.not_applicable(quantized) is None
