"""Read an ONNX graph's structure without loading its weights: op counts and IO dtypes."""

from __future__ import annotations

import collections
import os


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
