"""The execution providers ORT Turbo runs on: one row per provider, the table every other module reads.

A provider is stored by its key (``"cuda"``: in manifests, artefact ids, the API, the CLI's ``--ep``),
shown by its label (``"CUDA"``: the settings, the UI) and named to ONNX Runtime and Olive by its ORT name
(``"CUDAExecutionProvider"``). Adding a provider starts with a row here, then its recipe (recipes.py) and
its session plan (sessions.plan_session).

It imports nothing: install.py reads it (through runtime_packages) before the WebUI, torch or
onnxruntime are loaded.
"""

from __future__ import annotations

import dataclasses

#: PyPI distributions that install the ``onnxruntime`` module (only one of them can be installed at a time)
ONNXRUNTIME_DISTRIBUTIONS = (
    "onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-rocm",
    "onnxruntime-qnn", "onnxruntime-training", "onnxruntime-silicon", "ort-nightly", "ort-nightly-gpu",
    "ort-nightly-directml",
)
_NVIDIA = frozenset({"onnxruntime-gpu", "ort-nightly-gpu"})
_DIRECTML = frozenset({"onnxruntime-directml", "ort-nightly-directml"})
_OPENVINO = frozenset({"onnxruntime-openvino"})


@dataclasses.dataclass(frozen=True)
class Provider:
    key: str
    label: str
    ort_name: str
    #: Olive's accelerator device for the recipe
    device: str
    #: the precision of the UNet recipe
    precision: str
    #: the VAE recipes offered, the fastest first (fp16 only where the provider runs it fast)
    vae_precisions: tuple[str, ...]
    #: the oldest ONNX Runtime that runs the provider's artefacts (its recipes' contrib ops)
    min_ort: str
    #: the distributions among ONNXRUNTIME_DISTRIBUTIONS whose onnxruntime serves it
    packages: frozenset[str]
    #: Automatic takes the offered provider of the lowest rank; None: only when chosen by name
    automatic_rank: int | None = None
    #: Automatic takes it only on a CPU with native bf16 (OpenVINO: 3-4x the CPU provider in bf16, about
    #: the same in fp32, measured in docs/benchmarks.md)
    automatic_needs_native_bf16: bool = False


#: in the order the settings show them
PROVIDERS: tuple[Provider, ...] = (
    Provider("cuda", "CUDA", "CUDAExecutionProvider", "gpu", "fp16", ("fp16", "fp32"), "1.17.0", _NVIDIA,
             automatic_rank=0),
    # TensorRT builds an engine per shape profile (minutes, much GPU memory): never picked by Automatic
    Provider("tensorrt", "TensorRT", "TensorrtExecutionProvider", "gpu", "fp32", ("fp32",), "1.16.0", _NVIDIA),
    Provider("dml", "DirectML", "DmlExecutionProvider", "gpu", "fp16", ("fp16", "fp32"), "1.17.0", _DIRECTML,
             automatic_rank=1),
    Provider("openvino", "OpenVINO (CPU)", "OpenVINOExecutionProvider", "cpu", "fp32", ("fp32",), "1.23.0", _OPENVINO,
             automatic_rank=2, automatic_needs_native_bf16=True),
    Provider("cpu", "CPU", "CPUExecutionProvider", "cpu", "fp32", ("fp32",), "1.16.0",
             frozenset(ONNXRUNTIME_DISTRIBUTIONS), automatic_rank=3),
)
KEYS: tuple[str, ...] = tuple(p.key for p in PROVIDERS)
_BY_KEY = {p.key: p for p in PROVIDERS}


def provider(key: str) -> Provider:
    """The row of ``key``; a ValueError naming the keys for anything else."""
    try:
        return _BY_KEY[key]
    except (KeyError, TypeError):
        raise ValueError(f"unknown execution provider {key!r}; choose one of: {', '.join(KEYS)}") from None


def label(key: str) -> str:
    """What a user reads for ``key`` ("CUDA" for "cuda"); the key itself if this version has no such row
    (a manifest written by another version)."""
    row = _BY_KEY.get(key)
    return row.label if row is not None else str(key)


def automatic(offered, native_bf16: bool) -> str:
    """The provider "Automatic" means, among the keys ``offered`` (what this onnxruntime can run), on a CPU
    with or without native bf16: the offered row of the lowest ``automatic_rank`` it qualifies for; "cpu"
    when none does. The one place that decides it (the WebUI's settings, the benchmarks)."""
    ranked = sorted((p for p in PROVIDERS if p.key in set(offered) and p.automatic_rank is not None
                     and (native_bf16 or not p.automatic_needs_native_bf16)), key=lambda p: p.automatic_rank)
    return ranked[0].key if ranked else "cpu"


def served_by(distribution: str) -> frozenset[str]:
    """The keys of the providers the ``onnxruntime`` of ``distribution`` (a PEP 503 name) can serve."""
    return frozenset(p.key for p in PROVIDERS if distribution in p.packages)
