"""Export a WebUI-style UNet to fp32 ONNX with the TorchScript exporter.

Why these choices (measured with ORT 1.32, see the project's recipe notes):
* TorchScript exporter (``dynamo=False``): the dynamo graph loses the MultiHeadAttention,
  BiasSplitGelu and BiasAdd fusions.
* Attention traced through SDPA (``attention.sdpa_attention``): the only form of the ldm
  attention that ORT fuses.
* fp32: ORT's fusions match fp32 patterns; fp16 conversion comes after fusion, per recipe.
* One external-data file: SDXL is over 2 GB, and Olive and ORT read one file fastest.
  The exporter may write one file per tensor; they are streamed into one file without
  loading all weights at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from .attention import sdpa_attention
from .describe import UnetDescription, describe_unet
from .errors import ExportError
from .graph import consolidate_external_data

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.pb"
INPUT_NAMES = ("sample", "timestep", "encoder_hidden_states", "y")
OUTPUT_NAME = "latent"
DEFAULT_OPSET = 17


class _OnnxSignature(nn.Module):
    """Gives the UNet the ONNX input names; ``y`` only for models that take it."""

    def __init__(self, unet: nn.Module, takes_y: bool):
        super().__init__()
        self.unet = unet
        self.takes_y = takes_y

    def forward(self, sample, timestep, encoder_hidden_states, y=None):
        if self.takes_y:
            return self.unet(sample, timestep, encoder_hidden_states, y=y)
        return self.unet(sample, timestep, encoder_hidden_states)


@dataclasses.dataclass
class ExportResult:
    folder: Path
    description: UnetDescription
    opset: int
    export_s: float
    input_names: tuple[str, ...]

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


def _trace_inputs(description: UnetDescription) -> tuple[torch.Tensor, ...]:
    """Small inputs with B=2 and H != W so no dynamic dimension is specialised while tracing."""
    io = description.io
    m = io.spatial_multiple
    g = torch.Generator().manual_seed(0)
    args = [
        torch.randn(2, io.in_channels, 2 * m, 3 * m, generator=g),
        torch.tensor([999.0, 500.5]),
        torch.randn(2, 77, io.context_dim, generator=g),
    ]
    if io.adm_dim:
        args.append(torch.randn(2, io.adm_dim, generator=g))
    return tuple(args)


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


def export_unet(model: nn.Module, out_dir: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                consolidate: bool | None = None, progress=None) -> ExportResult:
    """Export ``model`` (``forward(x, timesteps, context, y=None)``) to ``out_dir``.

    ``out_dir`` must not exist; it appears only when the export is complete. ``progress`` is an
    optional ``callable(fraction, message)``. The weights are gathered into one file here when the
    ``onnx`` package is importable (``consolidate=None``); the WebUI's environment does not have it
    (it pins protobuf 3.20.0), and then the optimization child does it before running Olive.
    """
    out_dir = Path(out_dir)
    report = progress or (lambda fraction, message: None)
    description = describe_unet(model)
    takes_y = description.io.adm_dim is not None
    names = INPUT_NAMES if takes_y else INPUT_NAMES[:3]
    dynamic_axes = {
        "sample": {0: "B", 2: "H", 3: "W"},
        "timestep": {0: "B"},
        "encoder_hidden_states": {0: "B", 1: "S"},
        OUTPUT_NAME: {0: "B", 2: "H", 3: "W"},
    }
    if takes_y:
        dynamic_axes["y"] = {0: "B"}

    start = time.perf_counter()
    with staged_folder(out_dir, f"the {description.label} UNet") as work:
        report(0.05, f"tracing the {description.label} UNet ({description.parameters / 1e6:.0f} M parameters)")
        with on_cpu_in_fp32(model), sdpa_attention(model), without_onnx_package(), torch.no_grad():
            wrapper = _OnnxSignature(model, takes_y).eval()
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
                torch.onnx.export(
                    wrapper, _trace_inputs(description), str(work / MODEL_FILE), dynamo=False,
                    input_names=list(names), output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
                    opset_version=opset, do_constant_folding=True, export_params=True,
                )
            del wrapper
        consolidated = consolidate if consolidate is not None else onnx_available()
        if consolidated:
            report(0.8, "writing the weights into one file")
            consolidate_external_data(work / MODEL_FILE, WEIGHTS_FILE)
        elapsed = time.perf_counter() - start
        (work / "export.json").write_text(json.dumps({
            "family": description.family.value, "io": description.io.to_dict(), "opset": opset,
            "input_names": list(names), "output_name": OUTPUT_NAME, "torch": torch.__version__,
            "parameters": description.parameters, "export_s": round(elapsed, 2),
            "weights_consolidated": consolidated,
        }, indent=2))
    report(1.0, "export done")
    return ExportResult(out_dir, description, opset, elapsed, tuple(names))


def load_export_info(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / "export.json").read_text())
