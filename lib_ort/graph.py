"""Read an ONNX graph's structure without loading its weights: op counts and IO dtypes."""

from __future__ import annotations

import collections
import os
from pathlib import Path

#: tensors smaller than this stay inside model.onnx (shape constants and the like)
_EMBED_LIMIT = 1024


def load_graph(model_path: str | os.PathLike):
    import onnx

    return onnx.load(str(model_path), load_external_data=False)


def op_counts(model) -> dict[str, int]:
    """How many nodes of each op type the main graph holds (``model`` is a path or a ModelProto)."""
    if isinstance(model, (str, os.PathLike)):
        model = load_graph(model)
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def io_types(model) -> dict[str, str]:
    """ONNX element type name of every graph input and output, e.g. ``{"sample": "FLOAT16"}``."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = load_graph(model)
    return {
        v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
        for v in list(model.graph.input) + list(model.graph.output)
    }


def initializer_types(model) -> dict[str, int]:
    """How many initializers of each element type (e.g. ``{"FLOAT16": 120, "FLOAT": 30}``)."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = load_graph(model)
    counts = collections.Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer)
    return dict(counts)


def consolidate_external_data(model_path, weights_name: str) -> None:
    """Rewrite ``model_path`` so every large tensor lives in one file beside it.

    Reads one tensor at a time (embedded or from the exporter's per-tensor files) and appends it to
    ``weights_name``; the per-tensor files are removed afterwards.
    """
    import onnx

    model_path = Path(model_path)
    folder = model_path.parent
    model = onnx.load(str(model_path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    embedded = any(len(t.raw_data) >= _EMBED_LIMIT for t in model.graph.initializer)
    if locations <= {weights_name} and not embedded:
        return  # already one file
    old_files: set[Path] = set()
    with open(folder / weights_name, "wb") as out:
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in tensor.external_data}
                src = folder / info["location"]
                old_files.add(src)
                with open(src, "rb") as f:
                    f.seek(int(info.get("offset", 0)))
                    length = info.get("length")
                    data = f.read(int(length)) if length is not None else f.read()
            elif len(tensor.raw_data) >= _EMBED_LIMIT:
                data = tensor.raw_data
            else:
                continue
            pad = (-out.tell()) % 64  # aligned offsets let ORT map the weights
            out.write(b"\0" * pad)
            offset = out.tell()
            out.write(data)
            tensor.ClearField("raw_data")
            del tensor.external_data[:]
            for key, value in (("location", weights_name), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del data
    # the new graph replaces the old one only once the weights file is complete
    staged = folder / (model_path.name + ".part")
    onnx.save(model, str(staged))
    os.replace(staged, model_path)
    for f in old_files:
        if f.name != weights_name:
            f.unlink(missing_ok=True)
