"""Tests of one run (onnxshrink/run): recipes, and failed runs leaving nothing behind.

Fixtures shared with every folder (``registry``, ``cli``, ``cli_subprocess``, ``write_model``) are in tests/conftest.py;
helpers imported by tests are in tests/support/."""
