"""Fuzzing model loading (issue 8, part 4) with hypothesis over bytes, bounded for ``make test``.

Three kinds of input: random bytes; valid models with their bytes flipped, cut, spliced or repeated;
and valid models with protobuf fields edited (dims, types, raw data, external-data locations, offsets
and lengths, attribute types, IR and opset versions). Loading must either accept the model or refuse
it with ``InvalidModelError`` (exit 2) and one line naming the file: no other exception, and never a
byte of the file that sits outside the model's folder (``secret.bin``, reachable by ``../``, absolute
paths and a symlink). A few of the same inputs go through the whole command: exit 0 or 2 only.

``make fuzz`` runs the same targets for minutes (tests/fuzz/fuzz_load.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.errors import InvalidModelError
from onnxshrink.ir.io import load_model
from onnxshrink.ir.tensors import stored_tensors
from onnxshrink.testing import reference_graphs as rg

SECRET = b"FUZZ-SECRET-OUTSIDE-THE-FOLDER!!" * 8  # 256 bytes, also the size of two 32-float tensors
BOUNDED = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
CLI_BOUNDED = settings(BOUNDED, max_examples=15)


# ------------------------------------------------------------------------------------------------
# Seeds: small valid models, one of them with external data


def _sparse_model() -> onnx.ModelProto:
    values = numpy_helper.from_array(np.arange(1, 5, dtype=np.float32), "S")
    sparse = helper.make_sparse_tensor(
        values, numpy_helper.from_array(np.array([0, 3, 5, 7], np.int64), "S_indices"), [8]
    )
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "S"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])],
    )
    graph.sparse_initializer.append(sparse)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _function_model() -> onnx.ModelProto:
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(4, np.float32), "c"))
    function = helper.make_function(
        "local",
        "AddOnes",
        ["x"],
        ["y"],
        [const, helper.make_node("Add", ["x", "c"], ["y"])],
        [helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [helper.make_node("AddOnes", ["x"], ["y"], domain="local", name="call")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    model.ir_version = 8
    model.functions.append(function)
    return model


def _external_mlp() -> onnx.ModelProto:
    """mlp whose weights point at ``weights.bin`` (written by the folder fixture)."""
    model = rg.mlp()
    offset = 0
    for tensor in model.graph.initializer:
        size = len(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(size))):
            tensor.external_data.add(key=key, value=value)
        offset += size
    return model


def _weights_bin() -> bytes:
    return b"".join(t.raw_data for t in rg.mlp().graph.initializer)


SEEDS = {
    "mlp": rg.mlp,
    "mlp with external data": _external_mlp,
    "If subgraph": rg.if_subgraph,
    "Constant-node weights": rg.constant_node_weights,
    "already quantized": rg.qdq_quantized,
    "sparse initializer": _sparse_model,
    "local function": _function_model,
}
SEED_BYTES = {name: build().SerializeToString() for name, build in SEEDS.items()}


@contextmanager
def fuzz_folder() -> Iterator[Path]:
    """``root/secret.bin`` outside; ``root/model/`` with weights.bin, a symlink out, a symlink loop and a subfolder."""
    root = Path(tempfile.mkdtemp(prefix="onnxshrink-fuzz-"))
    try:
        (root / "secret.bin").write_bytes(SECRET)
        folder = root / "model"
        (folder / "sub").mkdir(parents=True)
        (folder / "weights.bin").write_bytes(_weights_bin())
        os.symlink(root / "secret.bin", folder / "link_out")
        os.symlink("loop", folder / "loop")
        yield folder
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Strategies

garbage = st.binary(max_size=4096)

byte_edit = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 2**16), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 2**16), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 2**16), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 2**16), st.just(0)),
    st.tuples(st.just("repeat"), st.integers(0, 2**16), st.integers(1, 64)),
)


def apply_byte_edits(data: bytes, edits: list[tuple]) -> bytes:
    buf = bytearray(data)
    for kind, position, arg in edits:
        if not buf:
            break
        i = position % len(buf)
        if kind == "flip":
            buf[i] ^= arg
        elif kind == "set":
            buf[i] = arg
        elif kind == "insert":
            buf[i:i] = arg
        elif kind == "delete":
            del buf[i : i + arg]
        elif kind == "truncate":
            del buf[i:]
        elif kind == "repeat":
            buf[i:i] = buf[i : i + arg]
    return bytes(buf)


mutated_bytes = st.builds(
    lambda seed, edits: apply_byte_edits(SEED_BYTES[seed], edits),
    st.sampled_from(sorted(SEED_BYTES)),
    st.lists(byte_edit, min_size=1, max_size=4),
)

LOCATIONS = (
    "weights.bin",
    "../secret.bin",
    "sub/../../secret.bin",
    "sub/../weights.bin",
    "./weights.bin",
    "link_out",
    "loop",
    "sub",
    ".",
    "..",
    "",
    "/etc/passwd",
    "C:\\secret.bin",
    "\\\\server\\share\\x",
    "~/secret.bin",
    "%2e%2e/secret.bin",
    "file:///etc/passwd",
    "weights.bin\x00.txt",
    "a" * 300,
    "sub/" * 40 + "x",
    "weights.bin/..",
    "ＷＥＩＧＨＴＳ.bin",
)
NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, 128, 256, 2047, 2048, 2049, 10**12, 2**62, -1, 2**64]),
    st.integers(-5, 5000),
).map(str)
field_edit = st.one_of(
    st.tuples(
        st.just("dims"),
        st.lists(st.one_of(st.integers(-3, 64), st.sampled_from([2**31, 10**12, 2**62, -(2**62)])), max_size=4),
    ),
    st.tuples(st.just("data_type"), st.integers(0, 30)),
    st.tuples(st.just("raw_data"), st.binary(max_size=96)),
    st.tuples(st.just("float_data"), st.lists(st.floats(width=32), max_size=8)),
    st.tuples(st.just("int64_data"), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8)),
    st.tuples(
        st.just("external"),
        st.lists(
            st.tuples(
                st.sampled_from(["location", "offset", "length", "checksum", "basepath", "bogus"]),
                st.one_of(st.sampled_from(LOCATIONS), NUMBERS, st.text(max_size=12)),
            ),
            min_size=1,
            max_size=4,
        ),
    ),
    st.tuples(st.just("attribute type"), st.integers(0, 14)),
    st.tuples(st.just("ir_version"), st.integers(-2, 20)),
    st.tuples(
        st.just("opset"),
        st.tuples(st.sampled_from(["", "ai.onnx", "com.microsoft", "local", "x"]), st.integers(-2, 40)),
    ),
    st.tuples(st.just("node input"), st.text(max_size=8)),
    st.tuples(
        st.just("sparse dims"), st.lists(st.one_of(st.integers(-2, 64), st.sampled_from([10**6, 2**40])), max_size=3)
    ),
)


def apply_field_edits(seed: str, edits: list[tuple], targets: list[int]) -> bytes:
    model = SEEDS[seed]()
    tensors = list(stored_tensors(model))
    nodes = [n for n in model.graph.node] + [n for f in model.functions for n in f.node]
    for (kind, value), target in zip(edits, targets):
        tensor = tensors[target % len(tensors)]
        if kind == "dims":
            tensor.ClearField("dims")
            tensor.dims.extend(value)
        elif kind == "data_type":
            tensor.data_type = value
        elif kind == "raw_data":
            tensor.raw_data = value
        elif kind == "float_data":
            tensor.ClearField("raw_data")
            tensor.float_data[:] = value
        elif kind == "int64_data":
            tensor.ClearField("raw_data")
            tensor.int64_data[:] = value
        elif kind == "external":
            tensor.data_location = TensorProto.EXTERNAL
            for key, text in value:
                entry = next((e for e in tensor.external_data if e.key == key), None) or tensor.external_data.add(
                    key=key
                )
                entry.value = text
        elif kind == "attribute type":
            attributes = [a for n in nodes for a in n.attribute]
            if attributes:
                attributes[target % len(attributes)].type = value
        elif kind == "ir_version":
            model.ir_version = value
        elif kind == "opset":
            domain, version = value
            model.opset_import.append(helper.make_opsetid(domain, version))
        elif kind == "node input" and nodes:
            node = nodes[target % len(nodes)]
            if node.input:
                node.input[target % len(node.input)] = value
        elif kind == "sparse dims" and model.graph.sparse_initializer:
            sparse = model.graph.sparse_initializer[0]
            sparse.ClearField("dims")
            sparse.dims.extend(value)
    return model.SerializeToString()


edited_fields = st.builds(
    apply_field_edits,
    st.sampled_from(sorted(SEEDS)),
    st.lists(field_edit, min_size=1, max_size=3),
    st.lists(st.integers(0, 1000), min_size=3, max_size=3),
)

any_input = st.one_of(garbage, mutated_bytes, edited_fields)


# ------------------------------------------------------------------------------------------------
# The target


HANG_SECONDS = 20  # loading a model of a few kilobytes takes milliseconds; this long is a hang


@contextmanager
def time_limit(seconds: int = HANG_SECONDS) -> Iterator[None]:
    """Fail what runs longer than ``seconds`` (SIGALRM: POSIX, main thread), so a hang fails like a crash."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def hang(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _note(text: str) -> None:
    """hypothesis.note inside a hypothesis test (shown for a failing example), nothing outside one."""
    try:
        note(text)
    except InvalidArgument:
        pass


def load_is_safe(folder: Path, data: bytes) -> bool:
    """Write ``data`` as ``folder/fuzz.onnx`` and load it: refused with one line naming the file (False),
    or accepted with consistent tensors and nothing read from outside the folder (True). Anything else
    raises."""
    path = folder / "fuzz.onnx"
    path.write_bytes(data)
    try:
        with time_limit():
            loaded = load_model(path)
    except InvalidModelError as exc:
        message = str(exc)
        _note(f"refused: {message}")
        assert exc.exit_code == 2
        assert "\n" not in message and message.startswith(str(path)), message
        return False
    for tensor in stored_tensors(loaded.model):
        assert SECRET[:64] not in tensor.raw_data, (
            f"tensor {tensor.name!r} holds bytes of a file outside the model's folder"
        )
        assert tensor.data_location != TensorProto.EXTERNAL, f"tensor {tensor.name!r} still points at external data"
    for tensor in loaded.model.graph.initializer:
        if tensor.data_type in (TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT8, TensorProto.FLOAT16):
            assert numpy_helper.to_array(tensor).size == int(np.prod(tensor.dims, dtype=object))
    return True


@BOUNDED
@given(garbage)
def test_random_bytes_are_refused(data):
    with fuzz_folder() as folder:
        accepted = load_is_safe(folder, data)
    assert not accepted or data  # an empty file is never a model


@BOUNDED
@given(mutated_bytes)
def test_mutated_model_bytes_are_refused_or_loaded_safely(data):
    with fuzz_folder() as folder:
        load_is_safe(folder, data)


@BOUNDED
@given(edited_fields)
def test_edited_model_fields_are_refused_or_loaded_safely(data):
    with fuzz_folder() as folder:
        load_is_safe(folder, data)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seeds_load(name):
    """The seeds are valid: what the fuzzer refuses is refused because of its edits."""
    with fuzz_folder() as folder:
        assert load_is_safe(folder, SEED_BYTES[name])


@CLI_BOUNDED
@given(st.one_of(mutated_bytes, edited_fields))
def test_whole_command_exits_0_or_2_on_fuzzed_models(cli, data):
    with fuzz_folder() as folder:
        path = folder / "fuzz.onnx"
        path.write_bytes(data)
        with time_limit():
            result = cli(path, "--plugin", "weight_prune", "-o", folder / "out.onnx", "--no-validate", "-q")
        note(repr(result))
        assert result.exit_code in (0, 2), result
        assert "Traceback" not in result.stderr
        if result.exit_code == 2:
            assert len(result.stderr.strip().splitlines()) == 1
            assert not (folder / "out.onnx").exists()
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".onnxshrink")) == []


@CLI_BOUNDED
@given(garbage)
def test_whole_command_exits_2_on_garbage(cli, data):
    with fuzz_folder() as folder:
        path = folder / "fuzz.onnx"
        path.write_bytes(data)
        with time_limit():
            result = cli(path, "--plugin", "weight_prune", "-o", folder / "out.onnx", "--no-validate", "-q")
        assert result.exit_code == 2, result
        assert len(result.stderr.strip().splitlines()) == 1 and str(path) in result.stderr
        assert not (folder / "out.onnx").exists()


# Inputs the loader of the first commit mishandled, kept as regressions: the first three crashed it
# (ValueError, RuntimeError and OSError escaped: exit 3 "internal error"); the next one passed
# onnx.checker and crashed the first method that read the tensor (exit 3 naming the wrong culprit).
FOUND = {
    "NUL byte in a location": ("mlp with external data", [("external", [("location", "weights.bin\x00.txt")])]),
    "symlink loop as location": ("mlp with external data", [("external", [("location", "loop")])]),
    "location too long for the OS": ("mlp with external data", [("external", [("location", "a" * 300)])]),
    "raw_data longer than its dims": ("mlp", [("raw_data", b"\0" * 2056)]),
    "secret behind a function's constant": (
        "local function",
        [("external", [("location", "../secret.bin"), ("length", "16")])],
    ),
    "float tensor declaring 10**12 elements": ("mlp", [("dims", [10**12])]),
    # seen in a ``make fuzz`` run: a flipped byte in the key "offset" made onnx ignore it and read from 0
    "mangled external data key": ("mlp with external data", [("external", [("bogus", "3456")])]),
}


@pytest.mark.parametrize("seed, edits", list(FOUND.values()), ids=list(FOUND))
def test_found_cases_stay_refused(seed, edits):
    with fuzz_folder() as folder:
        assert not load_is_safe(folder, apply_field_edits(seed, edits, [0, 0, 0]))
