"""Tests of the command line (onnxshrink/cli): commands, bad input, progress, exit codes.

Fixtures shared with every folder (``registry``, ``cli``, ``cli_subprocess``, ``write_model``) are in tests/conftest.py;
helpers imported by tests are in tests/support/."""
