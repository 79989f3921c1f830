"""Execution providers: short names, availability, and sessions with fixed, deterministic options.

Short names: ``cpu`` → CPUExecutionProvider, ``cuda`` → CUDAExecutionProvider, ``tensorrt`` →
TensorrtExecutionProvider. Availability comes from ``onnxruntime.get_available_providers()``. A CUDA or
TensorRT session also lists the CPU provider, as onnxruntime requires, for nodes the accelerator does not
take; ``node_placement`` reads a one-run profile to say how many nodes each provider ran.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxshrink.errors import UsageError
from onnxshrink.toolkit import runtime

PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_HINTS = {
    "cuda": "install onnxruntime-gpu and use a machine with an NVIDIA GPU",
    "tensorrt": "install onnxruntime-gpu built with TensorRT, and TensorRT itself, on a machine with an NVIDIA GPU",
}


def parse_providers(spec: str | Iterable[str]) -> list[str]:
    """``"cpu,cuda"`` (or a list; short or full names, any case) → unique short names in order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    full_to_short = {v.lower(): k for k, v in PROVIDERS.items()}
    out: list[str] = []
    for raw in items:
        name = str(raw).strip().lower()
        if not name:
            continue
        short = name if name in PROVIDERS else full_to_short.get(name)
        if short is None:
            raise UsageError(f"unknown execution provider {str(raw).strip()!r}; known: {', '.join(PROVIDERS)}")
        if short not in out:
            out.append(short)
    if not out:
        raise UsageError(f"no execution provider given; known: {', '.join(PROVIDERS)}")
    return out


def provider_status(name: str) -> tuple[bool, str | None]:
    """(available, reason when not) for a short provider name, from what onnxruntime reports."""
    short = parse_providers([name])[0]
    full = PROVIDERS[short]
    available = ort.get_available_providers()
    if full in available:
        return True, None
    hint = _HINTS.get(short, "not built into this onnxruntime")
    return False, f"onnxruntime {ort.__version__} reports no {full} ({hint}); available: {', '.join(available)}"


@dataclass
class Session:
    """An InferenceSession plus what was asked and what onnxruntime actually set up."""

    session: ort.InferenceSession
    provider: str  # short name asked for
    providers_used: list[str]
    create_s: float  # session creation time; for TensorRT this includes the engine build (or cache load)
    cache_dir: str | None = None
    notes: list[str] = field(default_factory=list)


def session_options(threads: int = 1, *, profile_dir: str | None = None) -> ort.SessionOptions:
    """The runtime's deterministic options (fixed threads, sequential, quiet), plus optional profiling."""
    if threads < 1:
        raise UsageError(f"threads must be a positive integer, got {threads}")
    opts = runtime.session_options(threads)
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(profile_dir, "onnxshrink_profile")
    return opts


def provider_list(provider: str, trt_cache_dir: str | os.PathLike | None = None) -> list:
    """The ``providers=`` argument for one short provider name (accelerators get CPU as fallback)."""
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider == "tensorrt":
        opts = {}
        if trt_cache_dir is not None:
            opts = {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(trt_cache_dir),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(trt_cache_dir),
            }
        return [("TensorrtExecutionProvider", opts), "CUDAExecutionProvider", "CPUExecutionProvider"]
    raise UsageError(f"unknown execution provider {provider!r}; known: {', '.join(PROVIDERS)}")


def make_session(
    model: str | os.PathLike | bytes,
    provider: str = "cpu",
    *,
    threads: int = 1,
    trt_cache_dir: str | os.PathLike | None = None,
    profile_dir: str | None = None,
) -> Session:
    """A session on exactly one provider (plus CPU fallback); load by path so external data works.

    Raises ``RuntimeError`` when onnxruntime did not enable the requested provider (it silently falls
    back to CPU when asked for a provider it lacks).
    """
    if provider == "tensorrt" and trt_cache_dir is not None:
        Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
    source = model if isinstance(model, bytes) else str(model)
    t0 = time.perf_counter()
    sess = ort.InferenceSession(
        source, session_options(threads, profile_dir=profile_dir), providers=provider_list(provider, trt_cache_dir)
    )
    create_s = time.perf_counter() - t0
    used = sess.get_providers()
    if PROVIDERS[provider] not in used:
        raise RuntimeError(f"onnxruntime did not enable {PROVIDERS[provider]} (session providers: {', '.join(used)})")
    return Session(sess, provider, used, create_s, str(trt_cache_dir) if trt_cache_dir is not None else None)


def node_placement(
    model: str | os.PathLike,
    provider: str,
    feed: dict[str, np.ndarray],
    *,
    threads: int = 1,
    trt_cache_dir: str | os.PathLike | None = None,
) -> dict[str, int]:
    """Nodes run per provider on one profiled run, e.g. ``{"CUDAExecutionProvider": 40, "CPUExecutionProvider": 2}``.

    Counts nodes after onnxruntime's fusions (a TensorRT engine counts as one node).
    """
    tmp = tempfile.mkdtemp(prefix="onnxshrink_prof_")
    try:
        s = make_session(model, provider, threads=threads, trt_cache_dir=trt_cache_dir, profile_dir=tmp)
        s.session.run(None, feed)
        return placement_from_profile(s.session.end_profiling())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def placement_from_profile(profile_file: str) -> dict[str, int]:
    """Count distinct nodes per provider in an onnxruntime profile file."""
    with open(profile_file) as fh:
        events = json.load(fh)
    seen: dict[str, str] = {}
    for ev in events:
        if ev.get("cat") == "Node":
            prov = ev.get("args", {}).get("provider")
            if prov:
                seen[
                    ev.get("name", "")
                    .removesuffix("_kernel_time")
                    .removesuffix("_fence_before")
                    .removesuffix("_fence_after")
                ] = prov
    return dict(sorted(Counter(seen.values()).items()))
