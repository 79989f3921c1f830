"""Helpers the tests share (plain modules, imported; fixtures live in the conftest.py files)."""
