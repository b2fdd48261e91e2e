"""Olive's ``OrtTransformersOptimization`` pass, run with the weights left on disk.

Why: Olive's pass hands ORT's transformers optimizer a model *path*, and the optimizer loads every
weight into memory; its symbolic shape inference then copies the whole model (weights included) each
time it runs, the fp16 conversion runs it once more, and the save serializes another copy. For the
full-size SD-Turbo UNet (3.5 GB) that was a 16.7 GB child; for SDXL (10.3 GB) it cannot run on a 24 GB
machine. Here the same pass config drives the same ORT functions (``optimizer.optimize_model``,
``OnnxModel.convert_float_to_float16``, ``topological_sort``) on a model loaded *without* its external
data: the graph is in memory, the weights stay in the export's file, and ONNX reads a weight from disk
only for the moment a fusion or a dtype check looks at it. The fused graph is the one Olive's pass
makes (the tests compare op counts and outputs); only where the bytes live differs.

Two details make that hold:
* ONNX resolves a weight's file relative to the working directory (ORT calls ``numpy_helper.to_array``
  without a base folder) and refuses links (hard or symbolic), so the pass runs in the export's folder.
* fp16: ORT's conversion changes a weight's dtype in the proto and converts the bytes it holds; a
  weight on disk has none, and reading it back as fp16 would find fp32 bytes. So while the conversion
  runs, its per-tensor step (``float16.convert_tensor_float_to_float16``, looked up by ORT at each
  call) is wrapped: for a weight on disk, at the moment ORT converts it, its fp32 bytes are read,
  converted by ORT's own ``convert_np_to_float16`` with the limits ORT passed, appended to a side file
  in the export's folder (removed afterwards) and the tensor pointed at them; every other tensor goes
  to ORT's step unchanged. Shape inference before that moment reads the fp32 bytes, after it the fp16
  ones, as with the weights in memory. A check that every weight's byte length matches its dtype and
  shape guards the result, and the tests compare the graph and every weight with Olive's.

The output is written by ``graph.save_streamed``: one tensor at a time.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PASS_TYPE = "OrtTransformersOptimization"
#: the side files' names in the export folder (one per child process: two optimizations of one export
#: never share them): the weights the fusions made, and the fp16 weights
SIDE_PREFIX = "ort-turbo-side-"
#: pass options this runner does not implement: such a pass runs in Olive as it is
_OLIVE_ONLY = ("use_gqa", "input_int32", "only_onnxruntime")


def supports(pass_config: dict) -> bool:
    """Whether this runner does what Olive would with ``pass_config`` (opt_level 0: fusions in Python,
    no ONNX Runtime session, which would need the weights in memory)."""
    return (pass_config.get("type") == PASS_TYPE and not pass_config.get("opt_level")
            and not any(pass_config.get(k) for k in _OLIVE_ONLY)
            and not (pass_config.get("optimization_options") or {}).get("attention_op_type"))


@contextlib.contextmanager
def _working_directory(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _remove_stale_side_files(folder: Path) -> None:
    """Side files left by a child that was killed (their process is gone)."""
    for f in folder.glob(SIDE_PREFIX + "*.bin"):
        try:
            pid = int(f.stem[len(SIDE_PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass


def _external(tensor) -> dict:
    return {e.key: e.value for e in tensor.external_data}


def _point(tensor, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


@contextlib.contextmanager
def _fp16_on_disk(folder: Path, name: str):
    """While the block runs, ORT's fp16 conversion converts a weight on disk into ``folder/name``."""
    import sys

    import numpy as np
    import onnx
    from onnxruntime.transformers import onnx_model

    # ORT imports its float16 module by a bare name (its folder is put on sys.path): wrap the module
    # object the conversion really calls, whatever name it was imported under
    float16 = sys.modules[onnx_model.convert_float_to_float16.__module__]
    convert_in_memory = float16.convert_tensor_float_to_float16

    def convert(tensor, min_positive_val=5.96e-08, max_finite_val=65504.0):
        if not (isinstance(tensor, onnx.TensorProto) and tensor.data_type == onnx.TensorProto.FLOAT
                and tensor.data_location == onnx.TensorProto.EXTERNAL):
            return convert_in_memory(tensor, min_positive_val, max_finite_val)
        info = _external(tensor)
        with open(folder / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            data = np.frombuffer(f.read(int(info["length"])), dtype=np.float32)
        half = float16.convert_np_to_float16(data, min_positive_val, max_finite_val).astype(np.float16).tobytes()
        out.write(b"\0" * ((-out.tell()) % 64))
        _point(tensor, name, out.tell(), len(half))
        out.write(half)
        out.flush()  # shape inference may read it back at once
        tensor.data_type = onnx.TensorProto.FLOAT16
        return tensor

    with open(folder / name, "wb") as out:
        float16.convert_tensor_float_to_float16 = convert
        try:
            yield
        finally:
            float16.convert_tensor_float_to_float16 = convert_in_memory


def _spill(model, folder: Path, name: str) -> None:
    """Move the weights the fusions made in memory (fused QKV, channels-last convolutions) to
    ``folder/name`` and point at them: the shape inference that the fp16 conversion runs copies the
    whole model, and so copies nothing large."""
    import onnx

    from .graph import _EMBED_LIMIT, _data_fields

    with open(folder / name, "wb") as out:
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL or _data_fields(tensor) \
                    or len(tensor.raw_data) < _EMBED_LIMIT:
                continue
            out.write(b"\0" * ((-out.tell()) % 64))
            _point(tensor, name, out.tell(), len(tensor.raw_data))
            out.write(tensor.raw_data)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL


def check_external_lengths(model) -> None:
    """Every weight on disk must span exactly its shape times its element size."""
    import onnx
    from onnx import helper

    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        count = 1
        for d in tensor.dims:
            count *= d
        size = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize * count
        length = int(_external(tensor).get("length", -1))
        if length != size:
            raise ValueError(f"weight {tensor.name}: {length} bytes on disk for {size} expected")


def run(pass_config: dict, model_path: str | os.PathLike, out_path: str | os.PathLike, weights_name: str) -> Path:
    """Apply ``pass_config`` (an Olive ``OrtTransformersOptimization`` config, as in the recipes) to the
    model at ``model_path``; write ``out_path`` and its ``weights_name`` beside it. The model's folder
    is read, and holds the fp16 side file while the pass runs."""
    import onnx
    from onnxruntime.transformers import optimizer as ort_optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    from . import fusion_shim
    from .graph import save_streamed

    fusion_shim.apply()  # numpy >= 2.4 (see fusion_shim); idempotent, the child applied it already
    if not supports(pass_config):
        raise ValueError(f"this pass runs in Olive, not on disk: {pass_config}")
    model_path, out_path = Path(model_path).resolve(), Path(out_path).resolve()
    folder = model_path.parent
    _remove_stale_side_files(folder)
    spill, side = f"{SIDE_PREFIX}{os.getpid()}-fused.bin", f"{SIDE_PREFIX}{os.getpid()}-fp16.bin"
    model = onnx.load(str(model_path), load_external_data=False)
    model_type = pass_config["model_type"]
    options = None
    if pass_config.get("optimization_options"):
        options = FusionOptions(model_type)
        options.__dict__.update(pass_config["optimization_options"])
    try:
        with _working_directory(folder):
            optimized = ort_optimizer.optimize_model(
                model, model_type=model_type, num_heads=pass_config.get("num_heads", 0),
                hidden_size=pass_config.get("hidden_size", 0), optimization_options=options, opt_level=0,
                use_gpu=bool(pass_config.get("use_gpu")))
            del model
            _spill(optimized.model, folder, spill)
            if pass_config.get("float16"):
                with _fp16_on_disk(folder, side):
                    optimized.convert_float_to_float16(
                        keep_io_types=pass_config.get("keep_io_types", True),
                        op_block_list=pass_config.get("force_fp32_ops"),
                        node_block_list=pass_config.get("force_fp32_nodes"),
                        force_fp16_inputs=pass_config.get("force_fp16_inputs"))
            optimized.topological_sort()
        check_external_lengths(optimized.model)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        save_streamed(optimized.model, folder, out_path, weights_name)
    finally:
        for name in (spill, side):
            (folder / name).unlink(missing_ok=True)
    return out_path
