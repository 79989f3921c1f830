"""Tests of the model itself (onnxshrink/ir): safe loading, atomic saving, external data read and streamed,
fuzzed loading, large models end to end.

Fixtures shared with every folder (``registry``, ``cli``, ``cli_subprocess``, ``write_model``) are in tests/conftest.py;
helpers imported by tests are in tests/support/."""
