"""The weights (initializers) of an ONNX model file, read without the ``onnx`` package.

The WebUI's environment has no ``onnx`` (its protobuf pin is older than onnx needs), yet the LoRA path
must read an artefact's weights there. An ONNX file is a protobuf ``ModelProto``; this reads just enough
of the wire format to list the main graph's initializers (``ModelProto.graph`` = 7,
``GraphProto.initializer`` = 5, and in ``TensorProto``: dims 1, data_type 2, float_data 4, int32_data 5,
name 8, raw_data 9, external_data 13). Weights stored in the external data file are memory-mapped, never
read whole: the full-size UNet's 3.4 GB stay in the page cache, not in this process's heap.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

#: TensorProto.DataType -> numpy dtype, for the element types a weight can have
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def fields(buf):
    """(field number, wire type, value) of each field of one protobuf message (``buf``: bytes or a
    memoryview); ``value`` is an int for varints and fixed-size fields, a zero-copy memoryview of the
    bytes for length-delimited ones (a sub-message, a string, packed numbers)."""
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number}) at byte {pos}")
        yield number, wire, value


def _packed_varints(view) -> list[int]:
    out, pos = [], 0
    while pos < len(view):
        value, pos = _varint(view, pos)
        out.append(value)
    return out


@dataclasses.dataclass
class Initializer:
    name: str
    dtype: np.dtype
    shape: tuple
    #: (file, offset, length) in the external data file, or None when the bytes are in the model file
    external: tuple | None
    inline: bytes | None


def list_initializers(model_path: str | os.PathLike) -> dict[str, Initializer]:
    """Every initializer of the main graph, by name, without loading external weights."""
    graph = next((v for n, w, v in fields(Path(model_path).read_bytes()) if n == 7 and w == 2), None)
    if graph is None:
        raise ValueError(f"{model_path} holds no graph")
    out = {}
    for number, wire, tensor in fields(graph):
        if number == 5 and wire == 2:
            init = _tensor(tensor)
            out[init.name] = init
    return out


def _tensor(message) -> Initializer:
    dims, dtype, name, raw, external = [], 1, "", None, {}
    typed: dict[int, list] = {}  # float_data 4, int32_data 5, int64_data 7, double_data 10
    for number, wire, value in fields(message):
        if number == 1:
            dims.extend(_packed_varints(value) if wire == 2 else [value])
        elif number == 2:
            dtype = value
        elif number == 8:
            name = bytes(value).decode()
        elif number == 9:
            raw = bytes(value)
        elif number == 13:
            entry = {k: bytes(v).decode() for k, _, v in fields(value)}
            external[entry.get(1, "")] = entry.get(2, "")
        elif number in (4, 10):
            width, code = (4, "<f4") if number == 4 else (8, "<f8")
            if wire == 2:
                typed.setdefault(number, []).extend(np.frombuffer(bytes(value), dtype=code).tolist())
            else:
                typed.setdefault(number, []).append(np.frombuffer(value.to_bytes(width, "little"), dtype=code)[0])
        elif number in (5, 7):
            typed.setdefault(number, []).extend(_packed_varints(value) if wire == 2 else [value])
    if dtype not in DTYPES:
        return Initializer(name, np.dtype(np.uint8), tuple(dims), None, b"")  # strings, bools: never weights
    np_dtype = np.dtype(DTYPES[dtype])
    if external:
        where = (external["location"], int(external.get("offset", 0)),
                 int(external.get("length", 0)) or int(np.prod(dims)) * np_dtype.itemsize)
        return Initializer(name, np_dtype, tuple(dims), where, None)
    if raw is None and typed:
        values = next(iter(typed.values()))
        if dtype == 10:  # fp16 travels as its bit patterns in int32_data
            raw = np.array(values, dtype=np.int64).astype(np.uint16).tobytes()
        elif np_dtype.kind in "iu":  # varints: negative numbers come as 64-bit two's complement
            raw = np.array(values, dtype=np.uint64).view(np.int64).astype(np_dtype).tobytes()
        else:
            raw = np.array(values, dtype=np_dtype).tobytes()
    return Initializer(name, np_dtype, tuple(dims), None, raw or b"")


class Weights:
    """The initializers of one model file as read-only numpy arrays (memory-mapped when external)."""

    def __init__(self, model_path: str | os.PathLike):
        self.model_path = Path(model_path)
        self.entries = list_initializers(model_path)
        self._maps: dict[str, np.memmap] = {}

    def names(self):
        return self.entries.keys()

    def array(self, name: str) -> np.ndarray:
        e = self.entries[name]
        if e.external is None:
            return np.frombuffer(e.inline, dtype=e.dtype).reshape(e.shape)
        location, offset, length = e.external
        if location not in self._maps:
            self._maps[location] = np.memmap(self.model_path.parent / location, dtype=np.uint8, mode="r")
        return self._maps[location][offset:offset + length].view(e.dtype).reshape(e.shape)
