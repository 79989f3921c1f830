"""onnxshrink: a plugin-based optimizer for ONNX models.

The public API for plugin authors and Python users. Plugins import only what is here.
"""

from __future__ import annotations

from .channels import (
    ChannelAnalysis,
    ChannelGroup,
    ChannelRemoval,
    analyze_channels,
    channel_importance,
    reconstruct_consumers,
    remove_channels,
    select_channels,
)
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
    node_label,
    op_histogram,
    producer,
    replace_weight,
    unique_name,
    unknown_exclusions,
    weight_axes,
    weight_tensors,
)
from .hookspecs import hookimpl
from .method import KINDS, Method, Option, Options, Tunable
from .model_io import LoadedModel, load_model, save_model
from .quantization import (
    QuantizedTensor,
    dequantize_linear,
    matmul_nbits,
    matmul_nbits_reason,
    model_opset,
    pack_bits,
    quant_range,
    quantization_markers,
    quantize,
    required_opset,
    storage_chain,
    unpack_bits,
    upgrade_opset,
)
from .segments import SegmentRunner
from .lowbit import StoredWeight, pack_codes, packed_chain, sparse_chain, store_weight, tensor_bytes, unpack_codes, weight_chain
from .tidy import from_graph, tidy_model, to_graph

__version__ = "0.1.0"

__all__ = [
    "ChannelAnalysis",
    "ChannelGroup",
    "ChannelRemoval",
    "analyze_channels",
    "channel_importance",
    "reconstruct_consumers",
    "remove_channels",
    "select_channels",
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
    "Options",
    "PluginError",
    "QuantizedTensor",
    "SegmentRunner",
    "StoredWeight",
    "Use",
    "UsageError",
    "WeightTensor",
    "__version__",
    "all_names",
    "consumers",
    "dequantize_linear",
    "from_graph",
    "hookimpl",
    "is_graph_output",
    "iter_graphs",
    "iter_tensors",
    "load_model",
    "node_label",
    "matmul_nbits",
    "matmul_nbits_reason",
    "model_opset",
    "op_histogram",
    "pack_codes",
    "packed_chain",
    "pack_bits",
    "producer",
    "quant_range",
    "quantization_markers",
    "quantize",
    "replace_weight",
    "required_opset",
    "save_model",
    "sparse_chain",
    "storage_chain",
    "store_weight",
    "tensor_bytes",
    "tidy_model",
    "to_graph",
    "Tunable",
    "unique_name",
    "unknown_exclusions",
    "unpack_bits",
    "unpack_codes",
    "upgrade_opset",
    "weight_axes",
    "weight_chain",
    "weight_tensors",
]
