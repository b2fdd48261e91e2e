"""What a model part is: one ONNX graph cut out of a WebUI model, and the model that groups its parts.

A *part* (the UNet, the VAE decoder, the VAE encoder) knows its graph: the module to trace, its input and
output names, the dynamic axes and small trace inputs, and what its ``export.json`` and its entry in the
artefact's manifest record. A *model* groups the parts that one artefact holds and are optimized by one
child process: how to describe the WebUI module, its recipe per provider, where its parts lie in the
folders and what its manifest says beyond the fields every artefact has. ``lib_ort.export`` traces any
part and ``lib_ort.pipeline`` optimizes and registers any model; adding a part is one module here.
"""

from __future__ import annotations

import abc
import contextlib
from pathlib import Path

from torch import nn


class Part(abc.ABC):
    """One graph of a model. ``folder`` is where it lies in the export and in the artefact ('' = the root)."""

    name: str
    folder: str = ""
    output_name: str

    @abc.abstractmethod
    def input_names(self, description) -> tuple[str, ...]:
        """The graph's input names, in the order of ``trace_inputs``."""

    @abc.abstractmethod
    def graph(self, model: nn.Module, description) -> nn.Module:
        """The module to trace: ``model`` cut and wrapped so its forward takes exactly the graph's inputs."""

    @abc.abstractmethod
    def trace_inputs(self, description) -> tuple:
        """Small inputs whose dynamic dimensions all differ, so the tracer specialises none of them."""

    @abc.abstractmethod
    def dynamic_axes(self, description) -> dict:
        """``torch.onnx.export``'s dynamic axes for the inputs and the output."""

    @abc.abstractmethod
    def export_info(self, description) -> dict:
        """What this part's ``export.json`` records beyond the fields every export has."""

    def child_job(self, recipe: dict) -> dict:
        """Extra keys of this part's job for the optimization child (``lib_ort.olive_child``)."""
        return {}

    def path(self, root: Path) -> Path:
        return root / self.folder if self.folder else root

    def file(self, name: str) -> str:
        """``name`` relative to the artefact's folder."""
        return f"{self.folder}/{name}" if self.folder else name


class Model(abc.ABC):
    """The parts one artefact holds, optimized together by one child process and committed together."""

    kind: str
    parts: tuple[Part, ...]
    #: the file of an export folder that says what was exported
    info_file: str = "export.json"
    #: how much of ``prepare``'s progress the export takes (the rest is the optimization)
    export_share: float = 0.4

    @abc.abstractmethod
    def describe(self, model: nn.Module):
        """The model's description (``to_dict``-able); raises ``ValueError`` for a module of another kind."""

    @abc.abstractmethod
    def label(self, description) -> str:
        """How messages name the model, e.g. 'the SD1 UNet'."""

    def parameters(self, description) -> int:
        return description.parameters

    def trace_context(self, model: nn.Module):
        """A context the model is traced in (the UNet's attention is swapped for SDPA)."""
        return contextlib.nullcontext()

    def summary(self, description, infos: dict, opset: int, export_s: float) -> dict | None:
        """What ``info_file`` records when it is not the single part's own ``export.json``."""
        return None

    def exported_parts(self, info: dict) -> tuple[Part, ...]:
        return self.parts

    @abc.abstractmethod
    def recipe(self, ep: str, precision: str | None) -> dict:
        """The provider's Olive recipe for this model."""

    @abc.abstractmethod
    def manifest(self, info: dict, results: dict, files: list[str], options: dict) -> dict:
        """The manifest fields of this model's kind, from the export's info and each part's child result."""
