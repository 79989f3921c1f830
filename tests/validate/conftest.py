"""Tests of measuring and judging (onnxshrink/validate): data, synthetic inputs, size, latency, fidelity,
providers, the gate.

Fixtures shared with every folder (``registry``, ``cli``, ``cli_subprocess``, ``write_model``) are in tests/conftest.py;
helpers imported by tests are in tests/support/."""
