"""The defaults hold on every real model of the zoo (``make test-zoo``; marked ``zoo``, not in ``make test``).

Each model's calibration half is the only data a method sees; the evaluation half judges the output
(worst per-feed cosine of each float output against the original). See tests/zoo/conftest.py.
"""

from __future__ import annotations

import math

import pytest

from tests.zoo.conftest import bench_zoo, zoo_models

pytestmark = pytest.mark.zoo

# Thresholds, per method default. Tune them here when the defaults change (issue 14, items 2-4).
INT_QUANT_MAX_SIZE_RATIO = 0.35  # or a reason stated in the step's stats/warnings
INT_QUANT_MIN_WORST_COSINE = 0.98
WEIGHT_PRUNE_MAX_SIZE_RATIO = 1.0  # never larger than the input
WEIGHT_PRUNE_MIN_WORST_COSINE = 0.98

# Every built-in method with no options, plus sparse_store on what it is made for: a pruned model.
DEFAULT_CHAINS = [(m,) for m in bench_zoo.builtin_methods()] + [("weight_prune", "sparse_store")]

# Models that take 0.7-2.8 s per feed on one core (the zoo's report.json: mrz_unet 2824 ms, rivagan_decoder
# 826 ms, rivagan_encoder 702 ms; every other model is under 210 ms). Every method default on them takes
# tens of minutes on 2 cores, so they are also marked slow: `make test-zoo` (and CI) leaves them out,
# `make test-zoo-all` runs them.
HEAVY_MODELS = ("mrz_unet", "rivagan_decoder", "rivagan_encoder")

# One xdist group per model (make test-zoo runs -n 2 --dist loadgroup): each model's runs happen once.
MODELS = [
    pytest.param(m, marks=[pytest.mark.xdist_group(m)] + ([pytest.mark.slow] if m in HEAVY_MODELS else []))
    for m in zoo_models()
]

# Measured gaps between a default and its target, kept visible: the test runs and is reported xfail
# while the gap stands (and XPASS once it closes). Remove an entry once it is fixed.
KNOWN_GAPS = {
    ("int_quant", "swift_f0"): (
        "worst per-feed cosine 0.969 on 'pitch' (an arg-max over frequency bins turned into Hz: one bin "
        "moved on one feed is a large error); auto's mixed-precision choice reached 0.9985 on its held-back "
        "calibration feeds but does not hold on the evaluation half (docs/methods/int_quant.md)"
    ),
}

# Keys in a step's stats that carry a reason for leaving weights alone (searched at any depth).
REASON_KEYS = ("why", "reason", "already_quantized", "left")


def stated_reason(report: dict | None) -> str | None:
    """The first warning or reason any step gives, or None."""
    for step in (report or {}).get("steps", []):
        if step.get("warnings"):
            return step["warnings"][0]
        found = _find_reason(step.get("stats"))
        if found:
            return found
    return None


def _find_reason(value) -> str | None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in REASON_KEYS and item not in (None, "", [], {}):
                return f"{key}: {str(item)[:200]}"
            found = _find_reason(item)
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _find_reason(item)
            if found:
                return found
    return None


def _ran_cleanly(model: str, steps: tuple[str, ...], record: dict, judged: dict) -> None:
    what = f"{model}: onnxshrink --plugin {' --plugin '.join(steps)}"
    assert record["status"] != "timeout", f"{what}: {record['error']}"
    assert record["exit_code"] != 3, f"{what} crashed (exit 3): {record['error']}"
    assert record["exit_code"] == 0, f"{what} exit {record['exit_code']}: {record['error']}"
    assert judged["valid"], f"{what}: output does not run in onnxruntime: {judged.get('invalid_reason')}"
    assert judged["outputs_mismatch"] is None, f"{what}: {judged['outputs_mismatch']}"


def _worst(judged: dict) -> tuple[float, str]:
    return judged.get("worst_cosine", 1.0), judged.get("worst_output", "(no float output)")


@pytest.mark.parametrize("steps", DEFAULT_CHAINS, ids=" > ".join)
@pytest.mark.parametrize("model", MODELS)
def test_default_runs_and_keeps_the_outputs(zoo_runs, model, steps):
    """Never exit 3; the output loads, runs every evaluation feed, and keeps each output's dtype and shape."""
    record, judged = zoo_runs.run(model, *steps)
    _ran_cleanly(model, steps, record, judged)


@pytest.mark.parametrize("model", MODELS)
def test_int_quant_default_shrinks_and_stays_faithful(zoo_runs, model):
    record, judged = zoo_runs.run(model, "int_quant")
    _ran_cleanly(model, ("int_quant",), record, judged)
    size = judged["size_ratio"]
    if size > INT_QUANT_MAX_SIZE_RATIO:
        reason = stated_reason(record["report"])
        assert reason, (
            f"{model}: int_quant left the file at {size:.3f}x (> {INT_QUANT_MAX_SIZE_RATIO}x) and states no reason"
        )
    cos, output = _worst(judged)
    if ("int_quant", model) in KNOWN_GAPS and not cos >= INT_QUANT_MIN_WORST_COSINE:
        pytest.xfail(f"{model}: {KNOWN_GAPS['int_quant', model]} (measured now: {cos:.5f})")
    assert not math.isnan(cos) and cos >= INT_QUANT_MIN_WORST_COSINE, (
        f"{model}: int_quant worst per-feed cosine {cos:.5f} on output {output!r} < {INT_QUANT_MIN_WORST_COSINE} "
        f"(file {size:.3f}x)"
    )


@pytest.mark.parametrize("model", MODELS)
def test_weight_prune_default_is_not_larger_and_stays_faithful(zoo_runs, model):
    record, judged = zoo_runs.run(model, "weight_prune")
    _ran_cleanly(model, ("weight_prune",), record, judged)
    size = judged["size_ratio"]
    assert size <= WEIGHT_PRUNE_MAX_SIZE_RATIO, f"{model}: weight_prune made the file larger: {size:.4f}x"
    cos, output = _worst(judged)
    assert not math.isnan(cos) and cos >= WEIGHT_PRUNE_MIN_WORST_COSINE, (
        f"{model}: weight_prune worst per-feed cosine {cos:.5f} on output {output!r} "
        f"< {WEIGHT_PRUNE_MIN_WORST_COSINE} (file {size:.3f}x)"
    )
