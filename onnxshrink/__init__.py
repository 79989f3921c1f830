"""onnxshrink: a plugin-based optimizer for ONNX models.

The public API for plugin authors and Python users. Plugins import only what is here.
"""

from __future__ import annotations

from onnxshrink.errors import (
    InvalidModelError,
    OnnxShrinkError,
    PluginError,
    UsageError,
)
from onnxshrink.ir.io import LoadedModel, load_model, save_model
from onnxshrink.ir.opset import model_opset, upgrade_opset
from onnxshrink.ir.shapes import inferred_shapes, inferred_types
from onnxshrink.ir.tensors import FLOAT_TYPES, iter_tensors, parameter_count, tensor_bytes
from onnxshrink.ir.walk import (
    all_names,
    constant_value,
    is_graph_output,
    iter_graphs,
    node_label,
    op_histogram,
    unique_name,
)
from onnxshrink.plugin.context import Context
from onnxshrink.plugin.hookspecs import hookimpl
from onnxshrink.plugin.method import KINDS, Method, Option, Options, PluginSpec, Tunable
from onnxshrink.run.recipe import Recipe, load_recipe, merge_cli
from onnxshrink.run.shrink import shrink
from onnxshrink.toolkit.channels import (
    ChannelAnalysis,
    ChannelGroup,
    ChannelRemoval,
    analyze_channels,
    channel_importance,
    reconstruct_consumers,
    remove_channels,
    select_channels,
)
from onnxshrink.toolkit.encoding.bits import (
    pack_bits,
    pack_codes,
    unpack_bits,
    unpack_codes,
)
from onnxshrink.toolkit.encoding.forms import (
    StoredWeight,
    packed_chain,
    sparse_chain,
    store_weight,
    weight_chain,
)
from onnxshrink.toolkit.encoding.integer import (
    QuantizedTensor,
    dequantize_linear,
    matmul_nbits,
    matmul_nbits_reason,
    quant_range,
    quantization_markers,
    quantize,
    required_opset,
    storage_chain,
)
from onnxshrink.toolkit.index import GraphIndex, producer
from onnxshrink.toolkit.segments import SegmentRunner
from onnxshrink.toolkit.tidy import from_graph, tidy_model, to_graph
from onnxshrink.toolkit.weights import (
    DEFAULT_WEIGHT_INPUTS,
    EMBEDDING_INPUTS,
    Use,
    WeightTensor,
    consumers,
    replace_weight,
    unknown_exclusions,
    weight_axes,
    weight_tensors,
)
from onnxshrink.version import __version__

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
    "GraphIndex",
    "InvalidModelError",
    "KINDS",
    "LoadedModel",
    "Method",
    "OnnxShrinkError",
    "Option",
    "Options",
    "PluginError",
    "PluginSpec",
    "Recipe",
    "QuantizedTensor",
    "SegmentRunner",
    "StoredWeight",
    "Use",
    "UsageError",
    "WeightTensor",
    "__version__",
    "all_names",
    "consumers",
    "constant_value",
    "dequantize_linear",
    "from_graph",
    "hookimpl",
    "is_graph_output",
    "iter_graphs",
    "inferred_shapes",
    "inferred_types",
    "iter_tensors",
    "load_model",
    "load_recipe",
    "merge_cli",
    "node_label",
    "matmul_nbits",
    "matmul_nbits_reason",
    "model_opset",
    "op_histogram",
    "pack_codes",
    "packed_chain",
    "parameter_count",
    "pack_bits",
    "producer",
    "quant_range",
    "quantization_markers",
    "quantize",
    "replace_weight",
    "required_opset",
    "save_model",
    "shrink",
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
