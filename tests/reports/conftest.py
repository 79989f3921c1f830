"""Tests of the reports (onnxshrink/reports): JSON, JUnit, Markdown, HTML.

Fixtures shared with every folder (``registry``, ``cli``, ``cli_subprocess``, ``write_model``) are in tests/conftest.py;
helpers imported by tests are in tests/support/."""
