"""Tests of the search (onnxshrink/tune): local and on a real Ray runtime, search spaces, recipes it writes.

Fixtures shared with every folder (``registry``, ``cli``, ``cli_subprocess``, ``write_model``) are in tests/conftest.py;
helpers imported by tests are in tests/support/."""
