"""Tests of the conformance kit (onnxshrink/testing), the example plugin package, property-based runs of every method.

Fixtures shared with every folder (``registry``, ``cli``, ``cli_subprocess``, ``write_model``) are in tests/conftest.py;
helpers imported by tests are in tests/support/."""
