"""External data that stays on disk while a model is edited.

Large models keep their weights in external-data files. onnxshrink loads such a model without its
data (after checking every location, see ``model_io``), reads a tensor only when a method asks for it
(``WeightTensor.array()``), keeps only the tensors a method changed in memory, and writes the output's
data file by streaming: changed tensors from memory, untouched ones copied from the input's file in
chunks. Peak memory is then about the size of what changed, not of the model.

Relative locations are resolved against the folder set with :func:`external_data_dir` for the
duration of a run (the input model's folder).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .model_io import stored_tensors

_FOLDER: ContextVar[Path | None] = ContextVar("onnxshrink_external_data_dir", default=None)
CHUNK = 16 << 20
INLINE_LIMIT = 1024  # smaller tensors stay inside the .onnx file
LAZY_BYTES = 512 << 20


@contextlib.contextmanager
def external_data_dir(folder: str | os.PathLike) -> Iterator[Path]:
    """Resolve external-data locations against ``folder`` inside this block."""
    token = _FOLDER.set(Path(folder).resolve())
    try:
        yield Path(folder)
    finally:
        _FOLDER.reset(token)


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in stored_tensors(model) if is_external(t)]


def _source(tensor: onnx.TensorProto) -> tuple[Path, int, int]:
    folder = _FOLDER.get()
    if folder is None:
        raise RuntimeError(f"tensor {tensor.name!r} keeps its data in an external file, but no folder is set (onnxshrink.external.external_data_dir)")
    info = {entry.key: entry.value for entry in tensor.external_data}
    path = folder / info["location"]
    offset = int(info.get("offset", "0"))
    length = int(info["length"]) if "length" in info else path.stat().st_size - offset
    return path, offset, length


def external_source(tensor: onnx.TensorProto) -> tuple[Path, int, int]:
    """(file, offset, length) of an external tensor's data, resolved in the current folder."""
    return _source(tensor)


def data_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, in memory or in its external file."""
    return _source(tensor)[2] if is_external(tensor) else len(tensor.raw_data)


def read_external(tensor: onnx.TensorProto) -> np.ndarray:
    """The values of an external tensor, read from its file (only this tensor's bytes)."""
    path, offset, length = _source(tensor)
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    dtype = _plain_dtype(tensor.data_type)
    if dtype is not None and dtype.itemsize * count == length:  # one read straight into the array
        return np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(tuple(tensor.dims))
    with open(path, "rb") as fh:  # packed sub-byte types and the like: let onnx decode them
        fh.seek(offset)
        raw = fh.read(length)
    inline = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims, raw_data=raw)
    return numpy_helper.to_array(inline)


_PLAIN = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL,
}


def _plain_dtype(data_type: int) -> np.dtype | None:
    """The little-endian numpy dtype whose bytes are exactly ONNX's raw_data layout, if there is one."""
    if data_type not in _PLAIN:
        return None
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).newbyteorder("<")


def inline_all(model: onnx.ModelProto) -> onnx.ModelProto:
    """Read every external tensor's data into ``model`` itself; returns it."""
    for tensor in external_tensors(model):
        path, offset, length = _source(tensor)
        with open(path, "rb") as fh:
            fh.seek(offset)
            tensor.raw_data = fh.read(length)
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return model


def inline_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every external tensor's data read into it (for running it in memory)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return inline_all(copy)


def lazy_threshold() -> int:
    """External data above this many bytes stays on disk while editing (``ONNXSHRINK_LAZY_BYTES``)."""
    return int(os.environ.get("ONNXSHRINK_LAZY_BYTES", str(LAZY_BYTES)))


def write_with_external_data(model: onnx.ModelProto, model_path: Path, data_name: str) -> bool:
    """Write ``model_path`` and ``<folder>/<data_name>`` by streaming tensor by tensor.

    Tensors of at least ``INLINE_LIMIT`` bytes go to the data file in a fixed order (the model's own),
    external ones copied from their source in chunks. The model's tensors are left pointing at the new
    data file (as ``onnx.save_model`` does). Returns whether a data file was written.
    """
    data_path = model_path.parent / data_name
    offset = 0
    with open(data_path, "wb") as data:
        for tensor in stored_tensors(model):
            if is_external(tensor):
                path, start, length = _source(tensor)
                with open(path, "rb") as src:
                    src.seek(start)
                    remaining = length
                    while remaining:
                        chunk = src.read(min(CHUNK, remaining))
                        if not chunk:
                            raise OSError(f"external data of tensor {tensor.name!r} ended early in {path}")
                        data.write(chunk)
                        remaining -= len(chunk)
            elif tensor.HasField("raw_data") and len(tensor.raw_data) >= INLINE_LIMIT:
                length = len(tensor.raw_data)
                data.write(tensor.raw_data)
                tensor.ClearField("raw_data")
            else:
                continue
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                tensor.external_data.add(key=key, value=value)
            offset += length
        data.flush()
        os.fsync(data.fileno())
    with open(model_path, "wb") as fh:
        fh.write(model.SerializeToString(deterministic=True))
        fh.flush()
        os.fsync(fh.fileno())
    if offset == 0:
        data_path.unlink()
    return offset > 0
