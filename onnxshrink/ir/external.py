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
import ctypes
import os
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxshrink.ir.tensors import stored_tensors

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


def external_source(tensor: onnx.TensorProto) -> tuple[Path, int, int]:
    """(file, offset, length) of an external tensor's data, resolved in the current folder."""
    folder = _FOLDER.get()
    if folder is None:
        raise RuntimeError(
            f"tensor {tensor.name!r} keeps its data in an external file, but no folder is set "
            "(onnxshrink.ir.external.external_data_dir)"
        )
    info = {entry.key: entry.value for entry in tensor.external_data}
    path = folder / info["location"]
    offset = int(info.get("offset", "0"))
    length = int(info["length"]) if "length" in info else path.stat().st_size - offset
    return path, offset, length


def data_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, in memory or in its external file."""
    return external_source(tensor)[2] if is_external(tensor) else len(tensor.raw_data)


def read_external(tensor: onnx.TensorProto) -> np.ndarray:
    """The values of an external tensor, read from its file (only this tensor's bytes)."""
    path, offset, length = external_source(tensor)
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    dtype = plain_dtype(tensor.data_type)
    if dtype is not None and dtype.itemsize * count == length:  # one read straight into the array
        return np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(tuple(tensor.dims))
    with open(path, "rb") as fh:  # packed sub-byte types and the like: let onnx decode them
        fh.seek(offset)
        raw = fh.read(length)
    inline = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims, raw_data=raw)
    return numpy_helper.to_array(inline)


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """A tensor's values, whether stored inline or (large models) still in its external-data file."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return read_external(tensor)
    return numpy_helper.to_array(tensor)


_PLAIN = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL,
}


def plain_dtype(data_type: int) -> np.dtype | None:
    """The little-endian numpy dtype whose bytes are exactly ONNX's raw_data layout, if there is one."""
    if data_type not in _PLAIN:
        return None
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).newbyteorder("<")


def inline_all(model: onnx.ModelProto) -> onnx.ModelProto:
    """Read every external tensor's data into ``model`` itself; returns it."""
    for tensor in external_tensors(model):
        path, offset, length = external_source(tensor)
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


def _copy_range(path: Path, start: int, length: int, out, name: str) -> None:
    """Append ``length`` bytes of ``path`` from ``start`` to the open file ``out``: inside the kernel
    (``os.copy_file_range``) where it can, else in chunks."""
    with open(path, "rb") as src:
        copied = 0
        if hasattr(os, "copy_file_range"):
            out.flush()
            try:
                while copied < length:
                    step = os.copy_file_range(src.fileno(), out.fileno(), min(CHUNK, length - copied), start + copied)
                    if step == 0:
                        break
                    copied += step
            except OSError:  # another file system, an old kernel: what is left goes through memory
                pass
        src.seek(start + copied)
        while copied < length:
            chunk = src.read(min(CHUNK, length - copied))
            if not chunk:
                raise OSError(f"external data of tensor {name!r} ended early in {path}")
            out.write(chunk)
            copied += len(chunk)


class _Writeback:
    """Starts writing the data file to disk every few MiB (Linux ``sync_file_range``), so that the
    final fsync waits for little and the disk works while tensors are still being written."""

    STEP = 64 << 20

    def __init__(self, fh):
        self.fh, self.done, self.pending = fh, 0, 0

    def wrote(self, length: int) -> None:
        self.pending += length
        if self.pending >= self.STEP and _SYNC_FILE_RANGE is not None:
            self.fh.flush()
            _SYNC_FILE_RANGE(self.fh.fileno(), self.done, self.pending, 2)  # SYNC_FILE_RANGE_WRITE: start, don't wait
            self.done, self.pending = self.done + self.pending, 0


def _sync_file_range():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_SYNC_FILE_RANGE = _sync_file_range()


def planned_data_bytes(model: onnx.ModelProto) -> int:
    """About how many bytes :func:`write_with_external_data` will write (a progress total; reads no data)."""
    total = 0
    for tensor in stored_tensors(model):
        if is_external(tensor):
            total += external_source(tensor)[2]
        elif tensor.HasField("raw_data"):
            size = tensor.ByteSize()  # the field's length plus a few bytes of header; no copy of the data
            total += size if size >= INLINE_LIMIT else 0
    return total


def write_with_external_data(
    model: onnx.ModelProto, model_path: Path, data_name: str, advance: Callable[[int], None] | None = None
) -> bool:
    """Write ``model_path`` and ``<folder>/<data_name>`` by streaming tensor by tensor.

    Tensors of at least ``INLINE_LIMIT`` bytes go to the data file in a fixed order (the model's own),
    external ones copied from their source in chunks. The model's tensors are left pointing at the new
    data file (as ``onnx.save_model`` does). ``advance(n)`` is called with each tensor's bytes once
    written. Returns whether a data file was written.
    """
    data_path = model_path.parent / data_name
    offset = 0
    with open(data_path, "wb") as data:
        writeback = _Writeback(data)
        for tensor in stored_tensors(model):
            if is_external(tensor):
                path, start, length = external_source(tensor)
                _copy_range(path, start, length, data, tensor.name)
            elif tensor.HasField("raw_data"):
                raw = tensor.raw_data  # each read of the field copies it: once
                if len(raw) < INLINE_LIMIT:
                    continue
                length = len(raw)
                data.write(raw)
                del raw
                tensor.ClearField("raw_data")
            else:
                continue
            writeback.wrote(length)
            if advance is not None:
                advance(length)
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
