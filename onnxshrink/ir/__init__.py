"""The model itself: walking graphs, the tensors a model stores and their sizes, external data
(read on demand, written by streaming), safe loading and atomic saving, opsets.

Imports nothing from onnxshrink but ``errors``. Everything above builds on it.
"""
