"""mode=auto: build each representation that applies, measure it, keep the smallest that is good enough.

Good enough: smaller than the float model, worst per-feed cosine of every output against it ≥
``target_cosine`` on calibration feeds held back from calibrating (``check``), and CPU latency
(1 thread, interleaved with the float model) at most
``1 + latency_tolerance`` times the float model's. Among those, with ``prefer=size`` the smallest
file wins; files within 2% of each other count as the same size, and among them the simplest form
(storage, weights, dynamic, static in that order) wins unless another is faster by more than
``latency_tolerance``, confirmed by timing the two against each other. With ``prefer=speed`` the
fastest wins (the smallest of those within
``latency_tolerance`` of it). A candidate that fails to build or run is recorded with its error
and skipped. A candidate already rejected on size or fidelity is not timed (its ``latency_ratio`` is
null). When nothing is good enough, sensitivity-driven mixed precision is tried in the storage
form before the model is left float: below 8 bits the most sensitive layers kept at int8, then the
most sensitive at float16 with the next ones at int8, then kept at float16, then float.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from .build import MODES, Built, Settings, build
from .forms import Scheme
from .measure import Judge, latency_ratio
from .sensitivity import layer_table, mixed_precision, tiered_precision
from .static import Calibrated

SIZE_TIE = 0.02


@dataclass
class Choice:
    built: Built | None
    mode: str | None
    report: dict


def choose(
    model: onnx.ModelProto,
    settings: Settings,
    modes: Sequence[str],
    feeds: Sequence[dict[str, np.ndarray]],
    reference: list[list[np.ndarray]],
    *,
    target: float,
    tolerance: float,
    prefer: str = "size",
    calibrated: Calibrated | None,
    sensitivity: bool,
    skipped: dict[str, str],
    advance: Callable[[], None] = lambda: None,
    check: tuple[Sequence[dict[str, np.ndarray]], list[list[np.ndarray]]] | None = None,
    fallback: Sequence[Scheme | tuple[Scheme, Scheme] | None] = (None,),
) -> Choice:
    """Try ``modes`` in order and pick the winner; ``skipped`` maps modes not tried to why.

    ``feeds``/``reference`` are the calibration feeds and the float outputs on them (static ranges,
    sensitivity ranking); ``check`` holds feeds held back from both (and their float outputs). The
    static candidate, calibrated on ``feeds``, is judged on ``check`` alone; the others calibrate on
    nothing and are judged on every feed (``feeds`` and ``check``): more feeds, a sterner worst case.
    ``fallback``: the mixed-precision searches tried in the storage form when no mode meets the
    target, in order; each entry is the wider scheme the sensitive layers keep (None: float), or a
    pair (top, middle): the most sensitive layers at top, the next ones at middle (``tiered_precision``).
    """
    if check is None or check[0] is feeds:
        every = check_only = (feeds, reference)
    else:
        check_only = check
        every = (list(feeds) + list(check[0]), list(reference) + list(check[1]))
    float_bytes = model.ByteSize()
    rows: list[dict] = []
    builds: dict[str, Built] = {}
    digests: dict[str, dict] = {}
    output_names = [o.name for o in model.graph.output]

    judges = {"every": Judge(*every), "check": Judge(*check_only) if check_only is not every else None}

    def judge_for(key: str) -> Judge:
        return (judges["check"] or judges["every"]) if key == "static" else judges["every"]

    def measure(key: str, built: Built, row: dict) -> None:
        judge = judge_for(key)
        row["judged_on_feeds"] = len(judge.feeds)
        digest = hashlib.sha256(built.model.SerializeToString(deterministic=True)).hexdigest()
        if digest in digests and digests[digest]["judged_on_feeds"] == len(judge.feeds):
            twin = digests[digest]
            row.update(
                {
                    k: twin[k]
                    for k in (
                        "bytes",
                        "size_ratio",
                        "cosine",
                        "worst_cosine_per_output",
                        "top1_agreement",
                        "latency_ratio",
                    )
                }
            )
            row["note"] = f"same model as mode={twin['mode']}"
            if "latency_note" in twin:
                row["latency_note"] = twin["latency_note"]
        else:
            score = judge.score(built.model)
            size = built.model.ByteSize()
            row.update(
                {
                    "bytes": size,
                    "size_ratio": round(size / float_bytes, 4) if float_bytes else 1.0,
                    "cosine": round(score.cosine, 8),
                    "worst_cosine_per_output": {name: round(v, 8) for name, v in zip(output_names, score.per_output)},
                    "top1_agreement": score.top1,
                    "latency_ratio": None,
                }
            )
            # timed only when size and fidelity leave it a chance: timing a large model costs seconds
            if _verdict(row, target, tolerance) == "meets the target":
                row["latency_ratio"] = round(_latency(model, built.model, judge.feeds[0], tolerance), 4)
            else:
                row["latency_note"] = "not timed: already rejected on size or fidelity"
            digests[digest] = row
        row["verdict"] = _verdict(row, target, tolerance)
        builds[key] = built

    for mode in MODES:
        if mode in skipped:
            rows.append({"mode": mode, "verdict": f"skipped: {skipped[mode]}"})
            continue
        if mode not in modes:
            continue
        candidate = replace(settings, mode=mode)
        row: dict = {"mode": mode}
        try:
            if sensitivity:
                mixed = mixed_precision(
                    model,
                    candidate,
                    feeds,
                    reference,
                    target,
                    calibrated,
                    advance,
                    judge=judge_for(mode),
                )
                built = mixed.built
                row["kept_float"] = mixed.kept_float
            else:
                built = build(model, candidate, calibrated=calibrated)
            measure(mode, built, row)
        except Exception as exc:  # noqa: BLE001 - one failing candidate is recorded, never ends the run
            row["verdict"] = "failed"
            row["error"] = f"{type(exc).__name__}: {_one_line(exc)}"
        rows.append(row)
        advance()
    if not any(r.get("verdict") == "meets the target" for r in rows) and "storage" in modes:
        storage = replace(settings, mode="storage")
        table = None
        for wider in fallback:
            kept_as = _kept_as(wider)
            key = f"storage+sensitivity({kept_as})"
            row = {"mode": key}
            try:
                if table is None:
                    table = layer_table(model, storage, feeds, reference, calibrated, advance)
                if isinstance(wider, tuple):
                    _tiered(model, storage, table, target, judges["every"], wider, key, row, measure)
                else:
                    mixed = mixed_precision(
                        model,
                        storage,
                        feeds,
                        reference,
                        target,
                        calibrated,
                        advance,
                        wider=wider,
                        table=table,
                        judge=judges["every"],
                    )
                    row["kept_" + ("wider" if wider else "float")] = mixed.kept_float
                    if wider:
                        row["kept_as"] = kept_as
                    row["layers"] = len(mixed.table)
                    measure(key, mixed.built, row)
            except Exception as exc:  # noqa: BLE001
                row["verdict"] = "failed"
                row["error"] = f"{type(exc).__name__}: {_one_line(exc)}"
            rows.append(row)
            if row["verdict"] == "meets the target":
                break
    good = [r for r in rows if r.get("verdict") == "meets the target"]
    report: dict = {"target_cosine": target, "latency_tolerance": tolerance, "tried": rows}
    if not good:
        report["winner"] = None
        misses = "; ".join(f"{r['mode']}: {_miss(r, target, tolerance)}" for r in rows)
        report["why"] = (
            f"no representation met the target (smaller than float, worst per-feed cosine ≥ {target} "
            f"on held-back feeds, latency ≤ {1 + tolerance:.2f}x float), the model is left float: {misses}"
        )
        return Choice(None, None, report)
    if prefer == "speed":
        fastest = min(r["latency_ratio"] for r in good)
        close = [r for r in good if r["latency_ratio"] <= fastest + tolerance]  # within timing noise
        winner = min(close, key=lambda r: (r["bytes"], _rank(r["mode"])))
        why = (
            _describe(winner, target, tolerance)
            + f"; the smallest of the fastest candidates (within {tolerance:.2f}x of {fastest:.2f}x, prefer=speed)"
        )
    else:
        smallest = min(r["bytes"] for r in good)
        tied = sorted((r for r in good if r["bytes"] <= smallest * (1 + SIZE_TIE)), key=lambda r: _rank(r["mode"]))
        simplest, fastest = tied[0], min(tied, key=lambda r: r["latency_ratio"])
        # a more complex form wins a size tie only when it is faster by more than the timing tolerance,
        # confirmed by timing the two against each other
        winner = simplest
        if fastest["latency_ratio"] < simplest["latency_ratio"] - tolerance:
            head_to_head = latency_ratio(
                builds[simplest["mode"]].model, builds[fastest["mode"]].model, every[0][0], rounds=15
            )
            fastest["versus_" + simplest["mode"]] = round(head_to_head, 4)
            if head_to_head < 1 - tolerance:
                winner = fastest
        why = _describe(winner, target, tolerance)
        if len(tied) > 1:
            others = ", ".join(f"{r['mode']} {r['latency_ratio']:.2f}x" for r in tied if r is not winner)
            how = (
                "the fastest (confirmed head to head)"
                if winner is not simplest
                else f"the simplest (none confirmed faster by more than {tolerance:.2f}x)"
            )
            why += f"; {how} of the candidates within {SIZE_TIE:.0%} of the smallest size ({others})"
        else:
            why += "; the smallest candidate that meets the target"
    report["winner"] = winner["mode"]
    report["why"] = why
    return Choice(builds[winner["mode"]], winner["mode"].split("+")[0], report)


def _tiered(
    model: onnx.ModelProto,
    storage: Settings,
    table: list[dict],
    target: float,
    judge: Judge,
    schemes: tuple[Scheme, Scheme],
    key: str,
    row: dict,
    measure: Callable[[str, Built, dict], None],
) -> None:
    """The float16+int8 row: the most sensitive layers at float16, the next at int8, the rest at the low bits."""
    top, middle = schemes
    order = [r["layer"] for r in table]
    tiered = tiered_precision(model, storage, table, target, judge, top=top, middle=middle)
    row["layers"] = len(order)
    row["kept_as"] = _kept_as(schemes)
    if tiered is None:
        row.update({"verdict": "failed", "error": f"every layer at {_kept_as(top)} still misses {target}"})
        return
    row["kept_wider"] = tiered.top + tiered.middle
    row["tiers"] = {_kept_as(top): tiered.top, _kept_as(middle): tiered.middle}
    row["searched"] = tiered.searched
    cosines = {r["layer"]: r["cosine"] for r in table}
    for item in tiered.built.quantized:
        if item.get("kept_wider"):
            scheme = top if any(label in tiered.top for label in item.get("layers", [])) else middle
            alone = min((cosines[label] for label in item.get("layers", []) if label in cosines), default=None)
            why = f": at {storage.scheme.bits} bits alone it gives a worst per-feed cosine of {alone:.6f}"
            item["note"] = (
                f"kept at {_kept_as(scheme)} by the sensitivity search{why if alone is not None else ''}; "
                f"{len(tiered.top)} layers at {_kept_as(top)} and {len(tiered.middle)} at {_kept_as(middle)} "
                f"reach {tiered.cosine:.6f} ≥ {target}"
            )
    measure(key, tiered.built, row)


def _kept_as(wider: Scheme | tuple[Scheme, ...] | None) -> str:
    if isinstance(wider, tuple):
        return "+".join(_kept_as(w) for w in wider)
    return "float" if wider is None else "float16" if wider.bits == 16 else f"int{wider.bits}"


def _rank(mode: str) -> int:
    """Simplest first: the plain modes in MODES order, then the mixed-precision fallbacks."""
    return MODES.index(mode) if mode in MODES else len(MODES)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("…" if len(text) > 300 else "")


def _miss(row: dict, target: float, tolerance: float) -> str:
    """What one candidate missed: the criterion, the value reached and the target."""
    verdict = row.get("verdict", "")
    if verdict == "failed":
        return f"failed ({row['error']})"
    if verdict.startswith("skipped"):
        return verdict
    if verdict.startswith("fidelity"):
        return f"worst per-feed cosine {row['cosine']:.6f} < target {target}"
    if verdict.startswith("slower"):
        return f"latency {row['latency_ratio']:.2f}x float > {1 + tolerance:.2f}x"
    if verdict.startswith("not smaller"):
        return f"file {row['size_ratio']:.3f}x float, not smaller"
    return verdict


def _describe(row: dict, target: float, tolerance: float) -> str:
    text = (
        f"mode={row['mode']}: {row['bytes']} bytes ({row['size_ratio']:.3f} of float), "
        f"worst per-feed cosine {row['cosine']:.6f} ≥ {target}, "
        f"latency {row['latency_ratio']:.2f}x float ≤ {1 + tolerance:.2f}x"
    )
    if row.get("tiers"):
        (top, top_layers), (middle, middle_layers) = row["tiers"].items()
        names = ", ".join(top_layers[:5]) + (f" and {len(top_layers) - 5} more" if len(top_layers) > 5 else "")
        return (
            text + f"; {len(top_layers)} most sensitive layers kept at {top} ({names}), the next "
            f"{len(middle_layers)} at {middle}"
        )
    for key, how in (("kept_wider", f"kept at {row.get('kept_as')}"), ("kept_float", "kept float")):
        if row.get(key):
            names = ", ".join(row[key][:5]) + (f" and {len(row[key]) - 5} more" if len(row[key]) > 5 else "")
            text += f"; {len(row[key])} most sensitive layers {how} ({names})"
    return text


def _latency(
    baseline: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict[str, np.ndarray], tolerance: float
) -> float:
    """Interleaved ratio; a result just over the limit is measured again, longer, and that one counts."""
    ratio = latency_ratio(baseline, candidate, feed)
    if 1 + tolerance < ratio <= 1 + 3 * tolerance:
        ratio = latency_ratio(baseline, candidate, feed, rounds=15)
    return ratio


def _verdict(row: dict, target: float, tolerance: float) -> str:
    if row["size_ratio"] >= 1:
        return "not smaller than the float model"
    if row["cosine"] < target:
        return f"fidelity: worst per-feed cosine {row['cosine']:.6f} < {target}"
    if row["latency_ratio"] is not None and row["latency_ratio"] > 1 + tolerance:  # None: not timed yet
        return f"slower: {row['latency_ratio']:.2f}x the float model"
    return "meets the target"
