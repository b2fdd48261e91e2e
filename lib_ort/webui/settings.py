"""The "ORT Turbo" settings section.

Registered at import time through ``shared.options_templates`` (as the built-in Lora extension does)
so the options also exist under ``--api``/``--nowebui``, where callback-registered options are
missing from ``/sdapi/v1/options``.
"""

from __future__ import annotations

import functools

from .. import providers
from ..sessions import OPENVINO_PRECISIONS

SECTION = ("ort_turbo", "ORT Turbo", "sd")

PROVIDER = "ort_turbo_provider"
FP16_VAE = "ort_turbo_fp16_vae"
CUDA_GRAPHS = "ort_turbo_cuda_graphs"
CFG_FREE = "ort_turbo_cfg_free"
ARTEFACT_DIR = "ort_turbo_artefact_dir"
VAE_ON_ORT = "ort_turbo_vae"
OPENVINO_PRECISION = "ort_turbo_openvino_precision"

#: setting label -> provider key (the labels the setting stores, from the provider table)
PROVIDERS = {p.label: p.key for p in providers.PROVIDERS}
PROVIDER_CHOICES = ["Automatic", *PROVIDERS]
#: the "OpenVINO precision" setting's label -> its value for ``sessions.plan_session``
OPENVINO_PRECISION_CHOICES = {"Automatic": "auto", **{p: p for p in OPENVINO_PRECISIONS if p != "auto"}}


@functools.lru_cache(maxsize=1)
def _status_of_this_install() -> tuple:
    """The installed ONNX Runtime's providers do not change while the WebUI runs: read them once,
    not on every UNet call (the SD Unet checks the provider at each call)."""
    return tuple(_read_provider_status().items())


def provider_status() -> dict[str, str | None]:
    """For each provider label: None if this install can run it, else why not."""
    return dict(_status_of_this_install())


def _read_provider_status() -> dict[str, str | None]:
    try:
        import onnxruntime

        available = set(onnxruntime.get_available_providers())
        version = onnxruntime.__version__
    except Exception as exc:  # not installed, or an install whose import raises: either way none runs
        why = ("onnxruntime is not installed (see the console of the last start)" if isinstance(exc, ImportError)
               else f"onnxruntime does not import ({type(exc).__name__}: {exc})")
        return {label: why for label in PROVIDERS}
    status = {label: None if providers.provider(ep).ort_name in available else _missing(ep, version)
              for label, ep in PROVIDERS.items()}
    trt = next(label for label, ep in PROVIDERS.items() if ep == "tensorrt")
    if status[trt] is None and not _tensorrt_loads():
        # onnxruntime-gpu lists TensorRT whether or not TensorRT is installed
        status[trt] = "TensorRT (libnvinfer) is not installed"
    return status


def _missing(ep: str, version: str) -> str:
    """Why ``ep`` is not offered by this onnxruntime: OpenVINO comes only with its own package, installed on
    request (the README says how), since it replaces the onnxruntime the WebUI has."""
    if ep == "openvino":
        return f"not installed: needs onnxruntime-openvino in place of onnxruntime {version}, see the README"
    return f"not in this onnxruntime {version}"


def _tensorrt_loads() -> bool:
    """Whether TensorRT's core library loads; asked only where this onnxruntime lists TensorRT."""
    from ..cuda_libraries import tensorrt_library

    return tensorrt_library() is not None


def resolve_provider(choice: str, status: dict | None = None, cpu_flags=None) -> str:
    """The engine provider for a setting value; Automatic picks the best one this install offers.
    ``cpu_flags`` (this CPU's when None) say whether OpenVINO would run in bf16, the only way it wins."""
    status = provider_status() if status is None else status
    if choice in PROVIDERS:
        return PROVIDERS[choice]
    from ..cpu_features import has_native_bf16, this_cpu_flags

    offered = {PROVIDERS[label] for label, why in status.items() if why is None and label in PROVIDERS}
    return providers.automatic(offered, has_native_bf16(this_cpu_flags() if cpu_flags is None else cpu_flags))


def openvino_precision(opts) -> str:
    """The "OpenVINO precision" setting of ``opts`` (``shared.opts``) as ``plan_session`` takes it."""
    return OPENVINO_PRECISION_CHOICES.get(getattr(opts, OPENVINO_PRECISION, "Automatic"), "auto")


def _provider_info() -> str:
    status = provider_status()
    missing = [f"{label}: {why}" for label, why in status.items() if why]
    return "Unavailable here: " + "; ".join(missing) if missing else "all providers available"


def option_templates(shared, gr) -> dict:
    """The section's options, for ``shared.options_templates.update(...)``."""
    OptionInfo = shared.OptionInfo
    return shared.options_section(SECTION, {
        PROVIDER: OptionInfo("Automatic", "Execution provider", gr.Dropdown, {"choices": PROVIDER_CHOICES})
        .info(_provider_info()),
        FP16_VAE: OptionInfo(True, "fp16 VAE (ignored with --no-half-vae / --no-half; the stock SDXL VAE overflows "
                                   "in fp16, use the fp16-fix VAE)"),
        VAE_ON_ORT: OptionInfo(True, "VAE on ONNX Runtime (while ORT Turbo is the SD Unet and the loaded VAE has "
                                     "an artefact for this checkpoint and provider; TAESD is left alone)"),
        CUDA_GRAPHS: OptionInfo(False, "Static shapes with CUDA graphs (CUDA provider; one graph per image size)"),
        OPENVINO_PRECISION: OptionInfo("Automatic", "OpenVINO precision", gr.Radio,
                                       {"choices": list(OPENVINO_PRECISION_CHOICES)})
        .info("Automatic: bf16 on CPUs with native bf16 (AMX or AVX512_BF16), else fp32; bf16 is several times "
              "faster and its images differ slightly from fp32's"),
        CFG_FREE: OptionInfo(True, "CFG-free sampling at CFG scale 1 (skip the negative prompt's UNet rows)"),
        ARTEFACT_DIR: OptionInfo("", "Folder for artefacts", gr.Textbox, {"lines": 1, "max_lines": 1})
        .info("empty: the extension's artefacts folder, or $ORT_TURBO_HOME"),
    })
