"""Tests of the built-in methods (plugins/onnxshrink_plugins), each on graphs built in code and the digits
models in models/.

Fixtures shared with every folder (``registry``, ``cli``, ``cli_subprocess``, ``write_model``) are in tests/conftest.py;
helpers imported by tests are in tests/support/."""
