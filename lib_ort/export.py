"""Export any model part (``lib_ort.parts``) to fp32 ONNX with the TorchScript exporter.

Why these choices (measured with ORT 1.32, see the project's recipe notes):
* TorchScript exporter (``dynamo=False``): the dynamo graph loses the MultiHeadAttention,
  BiasSplitGelu and BiasAdd fusions.
* fp32: ORT's fusions match fp32 patterns; fp16 conversion comes after fusion, per recipe.
* One external-data file: SDXL is over 2 GB, and Olive and ORT read one file fastest.
  The exporter may write one file per tensor; they are streamed into one file without
  loading all weights at once.

Each part is written in its folder of the export (``model.onnx``, ``export.json``, ``weights.pb`` where
the ``onnx`` package exists), so the optimization child optimizes every part the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ExportError
from .graph import consolidate_external_data
from .memory import Need, check_disk, tensor_bytes_mb

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.pb"
DEFAULT_OPSET = 17


@dataclasses.dataclass
class ExportResult:
    folder: Path
    description: object
    opset: int
    export_s: float
    input_names: tuple[str, ...]
    #: what the export's info file records
    info: dict

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILE


@contextlib.contextmanager
def on_cpu_in_fp32(model: nn.Module):
    """Move ``model`` to CPU fp32 in place for the export and put it back afterwards.

    In place, parameter by parameter: the WebUI's fp16 GPU UNet is never held twice in full.
    """
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    try:
        if device.type != "cpu" or dtype != torch.float32:
            model.to(device="cpu", dtype=torch.float32)
        yield model
    finally:
        if device.type != "cpu" or dtype != torch.float32:
            model.to(device=device, dtype=dtype)


@contextlib.contextmanager
def staged_folder(out_dir: Path, what: str):
    """A hidden work folder beside ``out_dir``, renamed to it when the block completes.

    On any error the work folder is removed and the error raised as ``ExportError`` naming ``what``:
    an interrupted export leaves nothing that looks finished.
    """
    if out_dir.exists():
        raise ExportError(f"{out_dir} already exists; delete it or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        yield work
        os.replace(work, out_dir)
    except ExportError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise ExportError(f"exporting {what} failed: {type(exc).__name__}: {exc}") from exc


def onnx_available() -> bool:
    """Whether the ``onnx`` package imports here (the WebUI's environment has none; the toolchain's has)."""
    import importlib.util

    return importlib.util.find_spec("onnx") is not None


#: where torch keeps the step that inserts onnxscript functions into the exported proto
_ONNXSCRIPT_FN_MODULES = (
    "torch.onnx._internal.torchscript_exporter.onnx_proto_utils",  # torch >= 2.9
    "torch.onnx._internal.onnx_proto_utils",  # torch 2.1 - 2.8
)


@contextlib.contextmanager
def without_onnx_package():
    """Let the TorchScript exporter run where the ``onnx`` package cannot be installed.

    The WebUI pins protobuf 3.20.0, which no current ``onnx`` accepts. The exporter only needs
    ``onnx`` to splice custom onnxscript functions into the graph, and a UNet has none: the step
    returns the bytes unchanged. Here it is skipped (and put back afterwards) when ``onnx`` is absent.
    """
    import importlib

    if onnx_available():
        yield
        return
    patched = []
    try:
        for name in _ONNXSCRIPT_FN_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "_add_onnxscript_fn"):
                patched.append((module, module._add_onnxscript_fn))
                module._add_onnxscript_fn = lambda model_bytes, custom_opsets: model_bytes
        yield
    finally:
        for module, original in patched:
            module._add_onnxscript_fn = original


def _trace(part, model: nn.Module, description, folder: Path, opset: int, consolidate: bool) -> dict:
    """Trace ``part`` of ``model`` into ``folder`` and write its ``export.json``; returns what that records."""
    folder.mkdir(exist_ok=True)
    names = list(part.input_names(description))
    start = time.perf_counter()
    graph = part.graph(model, description)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            graph, part.trace_inputs(description), str(folder / MODEL_FILE), dynamo=False,
            input_names=names, output_names=[part.output_name], dynamic_axes=part.dynamic_axes(description),
            opset_version=opset, do_constant_folding=True, export_params=True,
        )
    del graph
    if consolidate:
        consolidate_external_data(folder / MODEL_FILE, WEIGHTS_FILE)
    info = {**part.export_info(description), "opset": opset, "input_names": names,
            "output_name": part.output_name, "torch": torch.__version__,
            "export_s": round(time.perf_counter() - start, 2), "weights_consolidated": consolidate}
    # the optimization child reads export.json of the folder it optimizes (weights_consolidated)
    (folder / "export.json").write_text(json.dumps(info, indent=2))
    return info


def export_model(model_kind, model: nn.Module, out_dir: str | os.PathLike, *, parts=None, opset: int = DEFAULT_OPSET,
                 consolidate: bool | None = None, progress=None) -> ExportResult:
    """Export ``parts`` (default: all) of ``model``, a ``model_kind`` (``lib_ort.parts.base.Model``), to ``out_dir``.

    ``out_dir`` must not exist; it appears only when every part is complete. A disk with less free space
    than the export needs (from the model's size) is refused first (``DiskFull``), before any tracing. The model is moved to CPU
    fp32 for the trace and put back afterwards. ``progress`` is an optional ``callable(fraction, message)``.
    The weights are gathered into one file here when the ``onnx`` package is importable
    (``consolidate=None``); the WebUI's environment does not have it (it pins protobuf 3.20.0), and then
    the optimization child does it before running Olive.
    """
    out_dir = Path(out_dir)
    report = progress or (lambda fraction, message: None)
    parts = tuple(parts or model_kind.parts)
    try:
        description = model_kind.describe(model)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    label = model_kind.label(description)
    consolidate = onnx_available() if consolidate is None else consolidate
    check_disk(out_dir.parent, Need(tensor_bytes_mb(model)).export_disk_mb, f"exporting {label}")
    start = time.perf_counter()
    with staged_folder(out_dir, label) as work:
        infos = {}
        with on_cpu_in_fp32(model), model_kind.trace_context(model), without_onnx_package(), torch.no_grad():
            for i, part in enumerate(parts):
                what = label if len(parts) == 1 else f"{label} {part.name}"
                report(0.05 + 0.9 * i / len(parts),
                       f"tracing {what} ({model_kind.parameters(description) / 1e6:.0f} M parameters)")
                infos[part.name] = _trace(part, model, description, part.path(work), opset, consolidate)
        export_s = round(time.perf_counter() - start, 2)
        info = model_kind.summary(description, infos, opset, export_s)
        if info is not None:
            (work / model_kind.info_file).write_text(json.dumps(info, indent=2))
        else:
            info = infos[parts[0].name]
    report(1.0, f"export of {label} done")
    return ExportResult(out_dir, description, opset, export_s, tuple(infos[parts[0].name]["input_names"]), info)


def load_export_info(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / "export.json").read_text())
