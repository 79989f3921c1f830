"""The latency interval: bootstrap maths on synthetic timings (deterministic), the session-block timer
with fake callables and a fake clock, and one real gate on a digits model (structure, not timing)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxshrink.errors import UsageError
from onnxshrink.validate.gate import evaluate_gates, interval_verdict, parse_gate
from onnxshrink.validate.latency import (
    block_length,
    bootstrap_medians,
    median_interval,
    ratio_interval,
    relative_half_width,
    session_blocks,
    timing_clock,
)
from tests.support.files import ROOT


def timings(ratio: float, n: int = 400, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Baseline ~1 ms with lognormal noise, candidate = ratio x baseline with its own noise (ns)."""
    rng = np.random.default_rng(seed)
    base = 1e6 * np.exp(rng.normal(0, noise, n))
    cand = ratio * base * np.exp(rng.normal(0, noise, n))
    return base, cand


def test_ratio_interval_covers_the_true_ratio_and_is_deterministic():
    base, cand = timings(1.3)
    ratio, lo, hi = ratio_interval(base, cand)
    assert lo < 1.3 < hi and lo <= ratio <= hi and hi - lo < 0.05
    assert ratio_interval(base, cand) == (ratio, lo, hi)  # same timings, same seed: same interval
    assert ratio_interval(base, cand, seed=1) != (ratio, lo, hi)  # the seed is what makes it repeatable


def test_identical_models_straddle_one_and_a_slower_one_lies_above():
    same = ratio_interval(*timings(1.0, seed=3))
    assert same[1] < 1.0 < same[2]
    slower = ratio_interval(*timings(1.3, seed=4))
    assert slower[1] > 1.0


def test_the_interval_narrows_with_more_rounds():
    widths = [relative_half_width(*ratio_interval(*timings(1.0, n=n, seed=5))) for n in (20, 200, 2000)]
    assert widths[0] > widths[1] > widths[2]


def test_a_disturbed_run_barely_moves_the_median_ratio():
    base, cand = timings(1.0, n=200, seed=6)
    cand = cand.copy()
    cand[50:60] *= 20  # ten runs where the candidate was descheduled
    ratio, lo, hi = ratio_interval(base, cand)
    assert 0.97 < ratio < 1.03 and lo < 1.0 < hi


def test_groups_widen_the_interval_when_session_pairs_disagree():
    base, cand = timings(1.0, n=240, noise=0.01, seed=7)
    groups = np.repeat(np.arange(6), 40)
    offsets = np.array([0.96, 1.04, 0.97, 1.03, 0.98, 1.02])  # each session pair a few % off
    cand = cand * offsets[groups]
    pooled = ratio_interval(base, cand)  # rounds treated as one pair: too sure of itself
    grouped = ratio_interval(base, cand, groups=groups)
    assert relative_half_width(*grouped) > 1.4 * relative_half_width(*pooled)
    assert grouped[1] < 1.0 < grouped[2]


def test_bootstrap_helpers():
    assert [block_length(n) for n in (1, 8, 27, 1000)] == [1, 2, 3, 10]
    medians = bootstrap_medians(np.arange(100.0), resamples=200)
    assert medians.shape == (200,) and 30 < medians.mean() < 70
    lo, hi = median_interval(np.full(50, 3.0))
    assert lo == hi == 3.0
    with pytest.raises(ValueError):
        ratio_interval([1, 2], [1])
    with pytest.raises(ValueError):
        ratio_interval([1, 0], [1, 1])


@pytest.mark.parametrize(
    "op, lo, hi, strict, expected",
    [
        ("<=", 0.95, 0.99, False, "pass"),
        ("<=", 0.98, 1.02, False, "inconclusive"),
        ("<=", 0.98, 1.02, True, "fail"),
        ("<=", 1.01, 1.05, False, "fail"),
        ("<=", 0.98, 1.0, True, "pass"),  # the upper bound on the threshold meets <=
        ("<", 0.98, 1.0, True, "fail"),
        ("<", 1.0, 1.02, False, "fail"),
        (">=", 1.01, 1.05, False, "pass"),
        (">=", 0.98, 1.02, False, "inconclusive"),
        (">=", 0.9, 0.99, False, "fail"),
        ("==", 0.98, 1.02, False, "pass"),
        ("==", 1.01, 1.02, False, "fail"),
    ],
)
def test_interval_verdict(op, lo, hi, strict, expected):
    assert interval_verdict(op, 1.0, lo, hi, strict=strict) == expected


def _report(ratio, lo, hi):
    return {
        "validation": {
            "latency": {
                "cpu": {
                    "status": "ok",
                    "ratio": ratio,
                    "ratio_ci": [lo, hi],
                    "warning": None,
                    "candidate": {"median_ms": 2.0, "median_ci_ms": [1.9, 2.1]},
                }
            }
        }
    }


def test_gate_judges_the_interval_not_the_point():
    check = [parse_gate("latency_ratio[cpu]<=1.0")]
    straddles = evaluate_gates(check, _report(1.004, 0.985, 1.024))
    c = straddles["checks"][0]
    assert straddles["passed"] is True and c["status"] == "inconclusive" and c["interval"] == [0.985, 1.024]
    assert "inconclusive" in c["reason"] and "straddles 1" in c["reason"] and "--strict-latency" in c["reason"]
    strict = evaluate_gates(check, _report(1.004, 0.985, 1.024), strict_latency=True)
    assert strict["passed"] is False and strict["strict_latency"] is True and strict["checks"][0]["status"] == "fail"
    above = evaluate_gates(check, _report(1.3, 1.27, 1.33))["checks"][0]
    assert above["passed"] is False and above["status"] == "fail" and "lies entirely > 1" in above["reason"]
    below = evaluate_gates(check, _report(0.7, 0.68, 0.72), strict_latency=True)["checks"][0]
    assert below["passed"] is True and below["status"] == "pass"
    ms = evaluate_gates([parse_gate("latency_ms<=2.05")], _report(1.0, 0.99, 1.01))["checks"][0]
    assert ms["status"] == "inconclusive" and ms["interval"] == [1.9, 2.1]


def test_a_report_without_an_interval_is_compared_by_its_point_value():
    report = _report(1.004, 0, 0)
    del report["validation"]["latency"]["cpu"]["ratio_ci"]
    c = evaluate_gates([parse_gate("latency_ratio<=1.0")], report)["checks"][0]
    assert c["status"] == "fail" and "interval" not in c


def fake_pair(cost_a: int, cost_b: int, t: list[int], created: list[int]):
    def new_pair(block: int):
        created.append(block)

        def fa():
            t[0] += cost_a

        def fb():
            t[0] += cost_b

        return fa, fb

    return new_pair


def test_session_blocks_fixed_rounds_one_pair():
    t, created = [0], []
    ta, tb, groups, stopped = session_blocks(
        fake_pair(3_000, 1_000, t, created), warmup=1, repeats=6, ci_width=None, clock=lambda: t[0]
    )
    assert (len(ta), stopped, created, set(groups)) == (6, "fixed rounds", [0], {0})
    assert ta == [3_000] * 6 and tb == [1_000] * 6  # alternating order, each call still timed as itself


def test_session_blocks_converge_on_fresh_pairs():
    t, created = [0], []
    wall = [0]

    def tick():
        wall[0] += 10_000_000  # every wall reading is 10 ms later
        return wall[0]

    ta, tb, groups, stopped = session_blocks(
        fake_pair(1_000, 1_300, t, created),
        warmup=0,
        repeats=20,
        ci_width=0.02,
        clock=lambda: t[0],
        wall=tick,
        min_block_s=0.05,
    )
    assert stopped == "converged" and created == [0, 1, 2, 3] and len(set(groups)) == 4  # MIN_BLOCKS pairs
    ratio, lo, hi = ratio_interval(ta, tb, groups=groups)
    assert ratio == pytest.approx(1.3) and lo == pytest.approx(1.3) and hi == pytest.approx(1.3)


def test_session_blocks_stop_at_the_time_budget():
    t, created, wall = [0], [], [0]

    def tick():
        wall[0] += 100_000_000  # 0.1 s per reading
        return wall[0]

    rng = np.random.default_rng(0)
    costs = iter(rng.integers(1_000, 3_000, 100_000).tolist())

    def new_pair(block):
        created.append(block)
        return (lambda: t.__setitem__(0, t[0] + next(costs))), (lambda: t.__setitem__(0, t[0] + next(costs)))

    ta, _, _, stopped = session_blocks(
        new_pair, warmup=0, repeats=4, ci_width=0.001, time_budget_s=2.0, clock=lambda: t[0], wall=tick
    )
    assert stopped == "time budget" and len(ta) >= 4
    with pytest.raises(UsageError):
        session_blocks(new_pair, repeats=0)
    with pytest.raises(UsageError):
        session_blocks(new_pair, ci_width=0)


def test_timing_clock():
    assert timing_clock("cpu", 1)[1] == "thread CPU time"
    assert timing_clock("cpu", 4)[1] == "wall time" and timing_clock("cuda", 1)[1] == "wall time"


def test_gate_command_end_to_end_on_a_digits_model(tmp_path):
    """The real CLI path: report keys and check structure (no assertion on which way the timing goes)."""
    from click.testing import CliRunner

    from onnxshrink.cli import main

    model, data = ROOT / "models" / "mlp.onnx", ROOT / "models" / "mlp_eval.npz"
    report = tmp_path / "r.json"
    result = CliRunner().invoke(
        main,
        [
            "gate",
            str(model),
            str(model),
            "--data",
            str(data),
            "--gate",
            "latency_ratio[cpu]<=1.0",
            "--gate",
            "cosine[logits]>=0.999",
            "--strict-latency",
            "--report",
            str(report),
            "--quiet",
        ],
    )
    assert result.exit_code in (0, 1), result.output
    r = json.loads(report.read_text())
    lat = r["validation"]["latency"]["cpu"]
    lo, hi = lat["ratio_ci"]
    assert lo <= lat["ratio"] <= hi and lat["rounds"] >= 20 and lat["sessions"] >= 1
    assert lat["stopped"] in ("converged", "time budget", "max rounds") and lat["clock"] == "thread CPU time"
    assert len(lat["baseline"]["times_ms"]) == len(lat["candidate"]["times_ms"]) == lat["rounds"]
    gate = r["gate"]
    assert gate["strict_latency"] is True
    latency_check, cosine_check = gate["checks"]
    assert latency_check["status"] in ("pass", "fail") and latency_check["interval"] == [
        lo,
        hi,
    ]  # strict: never inconclusive
    assert latency_check["passed"] is (hi <= 1.0)
    assert (
        cosine_check["output"] == "logits"
        and cosine_check["status"] == "pass"
        and cosine_check["value"] == pytest.approx(1.0)
    )
    assert result.exit_code == (0 if gate["passed"] else 1)


def test_strict_latency_from_a_recipe_and_the_command_line(tmp_path):
    from onnxshrink.run.recipe import load_recipe, merge_cli

    path = tmp_path / "r.toml"
    path.write_text('[gate]\nchecks = ["latency_ratio<=1.0"]\nstrict_latency = true\n')
    assert load_recipe(path).strict_latency is True
    path.write_text('[gate]\nchecks = ["latency_ratio<=1.0"]\n')
    recipe = load_recipe(path)
    assert recipe.strict_latency is False
    assert merge_cli(recipe, {"strict_latency": True}).strict_latency is True
    assert merge_cli(recipe, {"strict_latency": None}).strict_latency is False
