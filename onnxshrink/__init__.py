"""onnxshrink: a plugin-based optimizer for ONNX models.

The public API for plugin authors and Python users. Plugins import only what is here.
"""

from __future__ import annotations

from .context import Context
from .errors import InvalidModelError, OnnxShrinkError, PluginError, UsageError
from .graph import (
    DEFAULT_WEIGHT_INPUTS,
    EMBEDDING_INPUTS,
    FLOAT_TYPES,
    Use,
    WeightTensor,
    all_names,
    consumers,
    is_graph_output,
    iter_graphs,
    iter_tensors,
    op_histogram,
    producer,
    replace_weight,
    unique_name,
    weight_tensors,
)
from .hookspecs import hookimpl
from .method import KINDS, Method, Option
from .model_io import LoadedModel, load_model, save_model
from .tidy import from_graph, to_graph

__version__ = "0.1.0"

__all__ = [
    "Context",
    "DEFAULT_WEIGHT_INPUTS",
    "EMBEDDING_INPUTS",
    "FLOAT_TYPES",
    "InvalidModelError",
    "KINDS",
    "LoadedModel",
    "Method",
    "OnnxShrinkError",
    "Option",
    "PluginError",
    "Use",
    "UsageError",
    "WeightTensor",
    "__version__",
    "all_names",
    "consumers",
    "from_graph",
    "hookimpl",
    "is_graph_output",
    "iter_graphs",
    "iter_tensors",
    "load_model",
    "op_histogram",
    "producer",
    "replace_weight",
    "save_model",
    "to_graph",
    "unique_name",
    "weight_tensors",
]
