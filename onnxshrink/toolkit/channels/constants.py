"""Constant tensors of the main graph (initializers and Constant nodes): read, count readers, rewrite."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from onnxshrink.ir.external import is_external, read_external
from onnxshrink.ir.walk import all_names, unique_name
from onnxshrink.toolkit.tidy import node_reads


class Constants:
    """The main graph's constants by name, and how many node inputs (subgraphs included) read each name.

    Initializers that are also graph inputs are not constants: a caller may feed another value.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        inputs = {i.name for i in graph.input}
        self._initializers = {t.name: t for t in graph.initializer if t.name not in inputs}
        self._constant_nodes = {
            n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output
        }
        self.readers: Counter[str] = Counter()
        for node in graph.node:
            self.readers.update(name for name in node.input if name)
            self.readers.update(set(node_reads(node)) - set(node.input))
        self.readers.update(o.name for o in graph.output)
        self._cache: dict[str, np.ndarray | None] = {}

    def get(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is a constant, else None."""
        if name not in self._cache:
            self._cache[name] = _value(self._initializers.get(name), self._constant_nodes.get(name))
        return self._cache[name]

    def is_constant(self, name: str) -> bool:
        return bool(name) and self.get(name) is not None

    def write(self, node: onnx.NodeProto, index: int, array: np.ndarray) -> None:
        """Give ``node.input[index]`` the value ``array``: in place when this slot is its only reader,
        otherwise as a fresh initializer wired into this slot alone (the other readers keep theirs)."""
        name = node.input[index]
        dtype = self.get(name).dtype
        array = np.ascontiguousarray(array.astype(dtype, copy=False))
        if self.readers[name] == 1:
            if name in self._initializers:
                self._initializers[name].CopyFrom(numpy_helper.from_array(array, name))
            else:
                _set_constant_value(self._constant_nodes[name], numpy_helper.from_array(array, name))
            self._cache[name] = array
            return
        fresh = unique_name(all_names(self.model), f"{name}_pruned")
        tensor = numpy_helper.from_array(array, fresh)
        self.model.graph.initializer.append(tensor)
        self._initializers[fresh] = self.model.graph.initializer[-1]
        self._cache[fresh] = array
        self.readers[name] -= 1
        self.readers[fresh] = 1
        node.input[index] = fresh

    def add(self, base: str, array: np.ndarray) -> str:
        """A new initializer holding ``array``; returns its (fresh) name."""
        name = unique_name(all_names(self.model), base)
        self.model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        self._initializers[name] = self.model.graph.initializer[-1]
        self._cache[name] = array
        return name


def _value(initializer: onnx.TensorProto | None, constant: onnx.NodeProto | None) -> np.ndarray | None:
    if initializer is not None:
        return read_external(initializer) if is_external(initializer) else numpy_helper.to_array(initializer)
    if constant is None:
        return None
    for attr in constant.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), np.int64)
    return None


def _set_constant_value(node: onnx.NodeProto, tensor: onnx.TensorProto) -> None:
    del node.attribute[:]
    node.attribute.append(onnx.helper.make_attribute("value", tensor))
