"""Tests of the method API and the registry (onnxshrink/plugin): options, plugin discovery through real
entry points, faulty plugins.

Fixtures shared with every folder (``registry``, ``cli``, ``cli_subprocess``, ``write_model``) are in tests/conftest.py;
helpers imported by tests are in tests/support/."""
