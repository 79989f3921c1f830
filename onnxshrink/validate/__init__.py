"""Validation: measure a candidate model against its baseline (size, latency per provider, fidelity).

Measuring only; judging is the gate's job. ``validate`` returns the ``validation`` section of the
report, ``bench_single`` the same for one model (no fidelity).

Report keys (``validate``)
==========================

=========================================  ==============  =====================================================
key                                        type            meaning
=========================================  ==============  =====================================================
data.source                                str | None      the --data path; None for synthetic inputs
data.samples                               int             samples in the feeds used (sum of first-dim lengths)
data.feeds                                 int             number of feeds (session runs) used for fidelity
data.synthetic                             bool            True when inputs were random (no --data)
data.role                                  str             "all", "calibration" or "evaluation"
data.warnings                              list[str]       e.g. synthetic inputs, float64 cast, one-feed split
size.baseline / size.candidate             dict            measure_size: file_bytes, external_files, params,
                                                           nonzeros, compressed_bytes
size.size_ratio                            float | None    candidate/baseline file_bytes (incl. external data)
size.params_ratio                          float | None    candidate/baseline parameter count
size.nonzeros_ratio                        float | None    candidate/baseline non-zero parameter count
size.compressed_ratio                      float | None    candidate/baseline zlib-6 compressed bytes
                                                           (ratios: 1.0 if both 0, None if only baseline is 0)
latency[ep].status                         str             "ok" | "unavailable" | "failed" | "skipped"
latency[ep].reason                         str             why unavailable / skipped
latency[ep].error                          str             one-line error when failed
latency[ep].ratio                          float | None    median of the paired ratios candidate/baseline
latency[ep].ratio_ci                       [float, float]  its 95% interval (bootstrap over session pairs, then
                                                           rounds, fixed seed); the gate judges this
latency[ep].rounds / .sessions             int             timed rounds; fresh session pairs they ran on
latency[ep].stopped                        str             "converged" | "time budget" | "max rounds" |
                                                           "fixed rounds"
latency[ep].clock                          str             "thread CPU time" (cpu, 1 thread) | "wall time"
latency[ep].confidence / .ci_target        float           0.95; the half-width asked for (0.02 = ±2%)
latency[ep].time_budget_s / .order         float / str     wall-time budget; "alternating (A B, B A, ...)"
latency[ep].baseline / .candidate          dict            median_ms, median_ci_ms, p90_ms, min_ms, spread, runs,
                                                           times_ms (every run, paired by index),
                                                           providers_used, session_create_s, first_run_s,
                                                           nodes_by_provider, fallback_nodes (non-CPU eps),
                                                           engine_build_s (tensorrt: create + first run)
latency[ep].candidate.median_ms            float           candidate median latency, milliseconds
latency[ep].providers_used                 list[str]       providers of the candidate session
latency[ep].threads / .warmup              int             intra-op threads; warm-up rounds
latency[ep].warning                        str | None      spread > 0.25, or the interval wider than ci_target
latency[ep].cache_dir                      str | None      tensorrt only: engine cache folder (None: temporary)
fidelity.status                            str             "ok" | "failed" (candidate could not run/compare)
fidelity.error                             str             one-line error when failed
fidelity.labels                            bool            the data had labels
fidelity.outputs[name]                     dict            dtype, shape, cosine (= cosine_worst), cosine_worst,
                                                           cosine_mean, cosine_per_feed, worst_feed,
                                                           max_abs_error, rel_error, snr_db, top1_agreement,
                                                           class_scores, class_scores_rule, exact_match
                                                           (+ nonfinite_mismatch); metrics per feed, worst kept
fidelity.cosine                            float | None    worst feed of the worst float output
fidelity.cosine_mean                       float | None    lowest per-output mean cosine over feeds
fidelity.max_abs_error                     float | None    max absolute error over outputs (inf: NaN/inf mismatch)
fidelity.rel_error                         float | None    worst relative L2 error (floor 1e-6·√n) over feeds/outputs
fidelity.snr_db                            float | None    worst SNR in dB (300: equal outputs)
fidelity.top1_agreement                    float | None    min argmax agreement over class-score outputs
fidelity.exact_match                       float | None    min fraction of exactly equal elements
fidelity.accuracy.baseline / .candidate    float           label accuracy (fraction), first class-score output
fidelity.accuracy.drop                     float           baseline - candidate (fraction, e.g. 0.012)
fidelity.accuracy.output                   str             the output the accuracy was computed on
fidelity.warnings                          list[str]       e.g. labels given but no class-score output (why)
=========================================  ==============  =====================================================

``fidelity.accuracy`` is present only when the data has labels and an output holds class scores.
A value of None means "not applicable or undefined"; a gate should treat a None it needs as a failure.
``bench_single`` returns ``data``, ``size`` (one measure_size dict) and ``latency[ep]`` with the
per-model keys (median_ms, p90_ms, ...) directly under the provider, next to ``status``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from onnxshrink.errors import UsageError, one_line
from onnxshrink.validate import latency as _latency
from onnxshrink.validate.data import DataSet, load_feeds, parse_input_shape, split_calibration
from onnxshrink.validate.fidelity import accuracy, compare_outputs, output_producers, run_model
from onnxshrink.validate.providers import PROVIDERS, make_session, parse_providers, provider_status
from onnxshrink.validate.size import compare_size, measure_size

__all__ = [
    "PROVIDERS",
    "DataSet",
    "bench_single",
    "compare_outputs",
    "compare_size",
    "load_feeds",
    "make_session",
    "measure_size",
    "parse_input_shape",
    "parse_providers",
    "provider_status",
    "run_model",
    "split_calibration",
    "validate",
]

Progress = Callable[[str], None] | None


def _say(progress: Progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _skipped(providers: Sequence[str]) -> dict:
    return {ep: {"status": "skipped", "reason": "latency measurement switched off"} for ep in providers}


def validate(
    baseline_path: str | os.PathLike,
    candidate_path: str | os.PathLike,
    dataset: DataSet,
    *,
    providers: str | Sequence[str] = ("cpu",),
    threads: int = 1,
    warmup: int = _latency.DEFAULT_WARMUP,
    repeats: int = _latency.DEFAULT_REPEATS,
    min_time_s: float = _latency.DEFAULT_MIN_TIME_S,
    trt_cache_dir: str | os.PathLike | None = None,
    measure_latency: bool = True,
    progress: Progress = None,
    ci_width: float | None = _latency.DEFAULT_CI_WIDTH,
    time_budget_s: float = _latency.DEFAULT_TIME_BUDGET_S,
) -> dict:
    """The validation section (see the key table above) for a candidate against its baseline.

    ``dataset`` is used whole: pass the evaluation part of ``split_calibration`` when the candidate was
    calibrated on the same data. Fidelity runs on the CPU provider; latency on each of ``providers``.
    Raises ``UsageError`` when the baseline cannot run on the data or labels do not fit its outputs.
    """
    eps = parse_providers(providers)
    if not dataset.feeds:
        raise UsageError("no input feeds to validate with")
    _say(progress, "measuring size")
    base_size, cand_size = measure_size(baseline_path), measure_size(candidate_path)
    size = {"baseline": base_size, "candidate": cand_size, **compare_size(base_size, cand_size)}

    if measure_latency:
        lat = _latency.measure_latency(
            baseline_path,
            candidate_path,
            dataset.feeds,
            eps,
            threads=threads,
            warmup=warmup,
            repeats=repeats,
            min_time_s=min_time_s,
            trt_cache_dir=trt_cache_dir,
            progress=progress,
            ci_width=ci_width,
            time_budget_s=time_budget_s,
        )
    else:
        lat = _skipped(eps)

    _say(progress, f"comparing outputs on {len(dataset.feeds)} feed(s)")
    return {
        "data": dataset.summary(),
        "size": size,
        "latency": lat,
        "fidelity": _fidelity(baseline_path, candidate_path, dataset, threads),
    }


def _fidelity(baseline_path, candidate_path, dataset: DataSet, threads: int) -> dict:
    try:
        base_out = run_model(baseline_path, dataset.feeds, threads=threads)
    except Exception as e:
        raise UsageError(
            f"baseline model {str(baseline_path)!r} cannot run on the data {dataset.source or '(synthetic)'}: "
            f"{one_line(e)}"
        ) from None
    has_labels = dataset.labels is not None
    failed = {
        "status": "failed",
        "outputs": {},
        "cosine": None,
        "cosine_mean": None,
        "max_abs_error": None,
        "rel_error": None,
        "snr_db": None,
        "top1_agreement": None,
        "exact_match": None,
        "labels": has_labels,
        "warnings": [],
    }
    try:
        cand_out = run_model(candidate_path, dataset.feeds, threads=threads)
    except Exception as e:
        return {**failed, "error": f"candidate model {str(candidate_path)!r} failed to run: {one_line(e)}"}
    try:
        producers = output_producers(baseline_path)
    except Exception:  # noqa: BLE001 - the producer is a hint for the class-score rule, not a requirement
        producers = {}
    try:
        fid = compare_outputs(base_out, cand_out, producers=producers)
    except UsageError as e:
        return {**failed, "error": str(e)}
    if has_labels:
        acc, warning = accuracy(base_out, cand_out, dataset.labels, producers=producers)
        if acc is not None:
            fid["accuracy"] = acc
        if warning:
            fid["warnings"].append(warning)
    return {"status": "ok", "labels": has_labels, **fid}


def bench_single(
    model_path: str | os.PathLike,
    dataset: DataSet,
    providers: str | Sequence[str] = ("cpu",),
    *,
    threads: int = 1,
    warmup: int = _latency.DEFAULT_WARMUP,
    repeats: int = _latency.DEFAULT_REPEATS,
    min_time_s: float = _latency.DEFAULT_MIN_TIME_S,
    trt_cache_dir: str | os.PathLike | None = None,
    progress: Progress = None,
) -> dict:
    """``{"data", "size", "latency"}`` for one model (no fidelity)."""
    eps = parse_providers(providers)
    if not dataset.feeds:
        raise UsageError("no input feeds to time the model with")
    _say(progress, "measuring size")
    size = measure_size(model_path)
    lat = _latency.measure_latency_single(
        model_path,
        dataset.feeds,
        eps,
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        min_time_s=min_time_s,
        trt_cache_dir=trt_cache_dir,
        progress=progress,
    )
    return {"data": dataset.summary(), "size": size, "latency": lat}
