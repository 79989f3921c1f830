"""Helpers for testing onnxshrink methods: reference graphs (and, later, the conformance kit)."""

from .reference_graphs import REFERENCE_GRAPHS

__all__ = ["REFERENCE_GRAPHS"]
