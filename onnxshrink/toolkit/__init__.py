"""What methods edit models with: weights and where they are used, a producer/reader index,
integer/packed/sparse encodings, structured channel removal, layer-by-layer runs, tidying, and
onnxruntime sessions for all of these.

Imports only ``ir`` (and ``errors``). Plugins reach it through the names ``onnxshrink`` exports.
"""
