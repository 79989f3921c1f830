"""Helpers for testing onnxshrink methods: reference graphs and the conformance kit."""

from onnxshrink.testing.conformance import (
    ConformanceError,
    ConformanceReport,
    GraphResult,
    check_method,
    check_options_documented,
    run_method,
    shipped_models,
    synthetic_feeds,
)
from onnxshrink.testing.reference_graphs import HARD_GRAPHS, REFERENCE_GRAPHS

__all__ = [
    "HARD_GRAPHS",
    "REFERENCE_GRAPHS",
    "ConformanceError",
    "ConformanceReport",
    "GraphResult",
    "check_method",
    "check_options_documented",
    "run_method",
    "shipped_models",
    "synthetic_feeds",
]
