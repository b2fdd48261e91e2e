"""Read an ONNX graph's structure without loading its weights: op counts and IO dtypes."""

from __future__ import annotations

import collections
import os
from pathlib import Path

from .onnx_weights import fields

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


#: how much of a weights file is copied at once (a tensor may be larger: memory stays bounded)
_COPY_CHUNK = 64 * 2**20


def _data_fields(tensor):
    import onnx

    return [f for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
            if getattr(tensor, f)] if tensor.data_type != onnx.TensorProto.STRING else []


def save_streamed(model, source_dir, out_path, weights_name: str) -> set[Path]:
    """Save ``model`` (a ModelProto whose weights may still be on disk) as ``out_path`` with every large
    tensor in ``weights_name`` beside it, one tensor at a time: a weight still on disk (external, not
    loaded) is copied from its file under ``source_dir`` in chunks, one held in memory is written and
    dropped from the proto. So saving a 10 GB model needs no more memory than its graph.

    The graph file is staged and renamed last. Returns the source files the weights were read from.
    Tensors under ``_EMBED_LIMIT`` bytes stay in the graph (shape constants, which shape inference reads).
    """
    import onnx
    from onnx import numpy_helper

    source_dir, out_path = Path(source_dir), Path(out_path)
    sources: set[Path] = set()
    with open(out_path.parent / weights_name, "wb") as out:
        for tensor in model.graph.initializer:
            src = None
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in tensor.external_data}
                src = source_dir / info["location"]
                sources.add(src)
                offset, length = int(info.get("offset", 0)), info.get("length")
                length = int(length) if length is not None else src.stat().st_size - offset
                data = None
            else:
                fields = _data_fields(tensor)
                if fields:  # typed fields (float_data, ...): their bytes as ONNX stores them raw
                    data = numpy_helper.to_array(tensor).tobytes()
                    for f in fields:
                        tensor.ClearField(f)
                else:
                    data = tensor.raw_data
                if len(data) < _EMBED_LIMIT:
                    if fields:
                        tensor.raw_data = data
                    continue
                length = len(data)
            out.write(b"\0" * ((-out.tell()) % 64))  # aligned offsets let ORT map the weights
            start = out.tell()
            if data is None:
                with open(src, "rb") as f:
                    f.seek(offset)
                    left = length
                    while left:
                        chunk = f.read(min(left, _COPY_CHUNK))
                        if not chunk:
                            raise ValueError(f"{src} ends before the data of tensor {tensor.name}")
                        out.write(chunk)
                        left -= len(chunk)
            else:
                out.write(data)
            tensor.ClearField("raw_data")
            del tensor.external_data[:]
            for key, value in (("location", weights_name), ("offset", str(start)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del data
    staged = out_path.with_name(out_path.name + ".part")
    onnx.save(model, str(staged))
    os.replace(staged, out_path)
    return sources


def consolidate_external_data(model_path, weights_name: str) -> None:
    """Rewrite ``model_path`` so every large tensor lives in one file beside it.

    Reads one tensor at a time (embedded or from the exporter's per-tensor files) and appends it to
    ``weights_name``; the per-tensor files are removed afterwards.
    """
    import onnx

    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    embedded = any(len(t.raw_data) >= _EMBED_LIMIT for t in model.graph.initializer)
    if locations <= {weights_name} and not embedded:
        return  # already one file
    # the new graph replaces the old one only once the weights file is complete
    for f in save_streamed(model, model_path.parent, model_path, weights_name):
        if f.name != weights_name:
            f.unlink(missing_ok=True)


# -- the time embedding in fp32 --------------------------------------------------------------------
# The WebUI computes the sinusoidal time embedding in fp32 (``timesteps[:, None].float() * freqs``). In an
# fp16 graph the timestep is rounded (0.5 apart near t = 999, so 999.25 becomes 999) and t * freq (up to
# ~1000 rad) loses a third of a radian before Sin/Cos; the fp16 converter's node block list does not help,
# since it still rounds the frequency constant to fp16. So after the fp16 pass the embedding is rebuilt
# from the fp32 export: its nodes from the timestep input to Sin/Cos, copied in fp32 with their constants,
# a Cast to fp16 where the fp16 graph reads Sin/Cos, and the timestep input made FLOAT.

#: ops whose output dtype does not follow their input's (reading a float input as fp32 is fine for them)
_DTYPE_BLIND = {"Shape", "Size"}
_PREFIX = "fp32_time/"


def _consumers(nodes) -> dict:
    found = collections.defaultdict(list)
    for n in nodes:
        for i in n.input:
            found[i].append(n)
    return found


def time_embedding_nodes(model, input_name: str = "timestep") -> list[str]:
    """Names of the nodes on every path from ``input_name`` to a Sin or Cos, those included."""
    if isinstance(model, (str, os.PathLike)):
        model = load_graph(model)
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    consumers = _consumers(nodes)
    downstream: set[str] = set()
    frontier = [input_name]
    while frontier:
        for n in consumers.get(frontier.pop(), ()):
            if n.name not in downstream:
                downstream.add(n.name)
                frontier.extend(n.output)
    keep: set[str] = set()
    stack = [n for n in nodes if n.op_type in ("Sin", "Cos") and n.name in downstream]
    while stack:
        n = stack.pop()
        if n.name in keep or n.name not in downstream:
            continue
        keep.add(n.name)
        stack.extend(producer[i] for i in n.input if i in producer)
    return [n.name for n in nodes if n.name in keep]


def _read_names(graph) -> set:
    """Every tensor name a graph's nodes read, subgraphs (If/Loop bodies reading outer names) included."""
    names = set()
    for n in graph.node:
        names.update(n.input)
        for a in n.attribute:
            for sub in [a.g] * a.HasField("g") + list(a.graphs):
                names |= _read_names(sub)
    return names


def _remove_dead_nodes(graph) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        used = _read_names(graph) | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def fp32_time_embedding(model, export, input_name: str = "timestep") -> list[str]:
    """Rebuild, in ``model`` (an fp16 graph, changed in place), the time embedding of ``export`` (the fp32
    graph it was made from) in fp32, fed by an fp32 ``input_name``. Returns the export's node names copied
    (empty, and ``model`` unchanged, when there is no such embedding or the fp16 graph does not read it)."""
    import copy

    from onnx import TensorProto, helper

    names = time_embedding_nodes(export, input_name)
    graph, source = model.graph, export.graph
    value = next((v for v in graph.input if v.name == input_name), None)
    if not names or value is None:
        return []
    by_name = {n.name: n for n in source.node}
    region = [by_name[n] for n in names]
    ends = [o for n in region if n.op_type in ("Sin", "Cos") for o in n.output]
    read = {i for n in graph.node for i in n.input}
    if not all(e in read for e in ends):
        return []
    producer = {o: n for n in source.node for o in n.output}
    inits = {t.name: t for t in source.initializer}
    made = {o for n in region for o in n.output}
    in_model = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
    constants, new_inits, shared = [], [], set()
    for n in region:  # the region's other inputs: constants are copied, shape tensors (e.g. the batch
        for i in n.input:  # size an Expand broadcasts to) are read from the fp16 graph, where they live too
            if not i or i == input_name or i in made:
                continue
            if i in producer and producer[i].op_type == "Constant":
                if producer[i] not in constants:
                    constants.append(producer[i])
            elif i in inits and inits[i].data_location != TensorProto.EXTERNAL:
                new_inits.append(inits[i])
            elif i in in_model and i not in inits:
                shared.add(i)
            else:
                return []  # not a plain embedding: leave the graph alone
    rename = lambda t: t if t == input_name or t in shared else _PREFIX + t  # noqa: E731
    copies = []
    for n in constants + region:
        c = copy.deepcopy(n)
        c.name = _PREFIX + n.name
        c.input[:] = [rename(i) if i else i for i in n.input]
        c.output[:] = [rename(o) for o in n.output]
        copies.append(c)
    for t in new_inits:
        c = copy.deepcopy(t)
        c.name = _PREFIX + t.name
        graph.initializer.append(c)
    for e in ends:  # the fp16 graph now reads e from a Cast of the fp32 result
        for n in list(graph.node):
            if e in n.output:
                graph.node.remove(n)
        copies.append(helper.make_node("Cast", [rename(e)], [e], to=TensorProto.FLOAT16, name=_PREFIX + e + "_to_fp16"))
    for k, c in enumerate(copies):
        graph.node.insert(k, c)
    _remove_dead_nodes(graph)
    value.type.tensor_type.elem_type = TensorProto.FLOAT
    half = None
    for n in graph.node:  # anything else that reads the timestep as fp16 gets one Cast
        if n.name.startswith(_PREFIX) or n.op_type in _DTYPE_BLIND or input_name not in n.input:
            continue
        if half is None:
            half = helper.make_node("Cast", [input_name], [input_name + "_fp16"], to=TensorProto.FLOAT16,
                                    name=_PREFIX + input_name + "_to_fp16")
        n.input[:] = [half.output[0] if i == input_name else i for i in n.input]
    if half is not None:
        graph.node.insert(0, half)
    return names


# -- placement --------------------------------------------------------------------------------------

MEMCPY_OPS = (b"MemcpyToHost", b"MemcpyFromHost")


def _graph_memcpy(graph) -> int:
    total = 0
    for field, wire, node in fields(graph):
        if field != 1 or wire != 2:  # GraphProto.node
            continue
        for nf, nwire, value in fields(node):
            if nf == 4 and nwire == 2:  # NodeProto.op_type
                total += value in MEMCPY_OPS
            elif nf == 5 and nwire == 2:  # NodeProto.attribute: subgraphs of If/Loop/Scan
                total += sum(_graph_memcpy(g) for af, aw, g in fields(value) if af in (6, 11) and aw == 2)
    return total


def memcpy_count(model) -> int:
    """How many MemcpyToHost/MemcpyFromHost nodes an ORT-optimized graph holds (subgraphs included): ORT
    puts them around nodes it placed on the CPU, and a graph with any cannot be captured as a CUDA graph.
    ``model``: a path (its weights may be external; only the graph file is read) or a ModelProto."""
    data = Path(model).read_bytes() if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    return sum(_graph_memcpy(g) for field, wire, g in fields(data) if field == 7 and wire == 2)  # ModelProto.graph
