"""Tests of what methods edit with (onnxshrink/toolkit): weights and their uses, channel removal, segments,
encodings and their kernels.

Fixtures shared with every folder (``registry``, ``cli``, ``cli_subprocess``, ``write_model``) are in tests/conftest.py;
helpers imported by tests are in tests/support/."""
