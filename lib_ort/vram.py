"""Device memory policy for CUDA sessions, as data: refuse, make room, or go ahead, with the numbers used.

On 8–12 GB cards the CUDA path can hold two copies of a UNet: ``--medvram`` and a PyTorch fallback move
the torch UNet up while the ORT session keeps its own weights (SDXL: about 5 GB each). And the CUDA
provider's default ``cudnn_conv_use_max_workspace=1`` lets cuDNN's algorithm search take most of the free
memory, which the arena (``kSameAsRequested``) then keeps. So, before a session:

* free memory (``torch.cuda.mem_get_info``, plus what torch's cache holds but does not use) is compared
  with the artefact's weights: clearly too small is refused with the numbers, instead of an out-of-memory
  in the middle of a generation; torch's unused cache is emptied first when that makes the difference;
* small cards (≤ :data:`SMALL_CARD_BYTES`) get ``cudnn_conv_use_max_workspace=0`` (cuDNN's workspace capped
  by ORT), larger ones keep ORT's default, which is faster for fp16 convolutions;
* ``gpu_mem_limit`` is set only when asked for (``ORT_TURBO_GPU_MEM_LIMIT_MB``): an arena that hits it
  fails the run, which the WebUI layer turns into a PyTorch fallback.

And before the torch UNet moves back up for a fallback, :func:`must_release_session` says whether the ORT
session has to go first (the torch UNet's weights would not fit beside it).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

GiB = 1024 ** 3
MiB = 1024 ** 2
#: besides the weights, a session needs activations and cuDNN's workspace: below this much, refuse
ACTIVATION_MARGIN = 512 * MiB
#: cards with at most this much memory get the capped cuDNN workspace
SMALL_CARD_BYTES = 12 * GiB
GPU_MEM_LIMIT_ENV = "ORT_TURBO_GPU_MEM_LIMIT_MB"


@dataclasses.dataclass(frozen=True)
class VramDecision:
    action: str  # "create", "empty-torch-cache" (then create) or "refuse"
    free: int
    torch_cache: int  # reserved by torch's caching allocator but not in use
    total: int
    needed: int  # weights + ACTIVATION_MARGIN
    provider_options: dict  # CUDA provider options this decision adds
    message: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _gb(n: int) -> str:
    return f"{n / GiB:.1f} GB"


def plan_vram(*, weights: int, free: int, total: int, torch_cache: int = 0, what: str = "the ONNX UNet",
              gpu_mem_limit_mb: int | None = None) -> VramDecision:
    """The decision for a session whose weights take ``weights`` bytes, with ``free`` bytes free on the
    device (``total`` in all) and ``torch_cache`` bytes that emptying torch's cache would give back."""
    needed = weights + ACTIVATION_MARGIN
    options = {"cudnn_conv_use_max_workspace": "0" if total <= SMALL_CARD_BYTES else "1"}
    if gpu_mem_limit_mb:
        options["gpu_mem_limit"] = str(int(gpu_mem_limit_mb) * MiB)
    numbers = (f"{what} needs about {_gb(needed)} ({_gb(weights)} of weights), {_gb(free)} of {_gb(total)} is free"
               + (f" and torch's cache holds {_gb(torch_cache)} unused" if torch_cache else ""))
    if free >= needed:
        return VramDecision("create", free, torch_cache, total, needed, options, numbers)
    if free + torch_cache >= needed:
        return VramDecision("empty-torch-cache", free, torch_cache, total, needed, options,
                            numbers + ": emptying torch's cache first")
    return VramDecision("refuse", free, torch_cache, total, needed, options,
                        f"not enough free GPU memory: {numbers}. Close other programs using the GPU, use a smaller "
                        "model, or choose the CPU provider")


def must_release_session(*, torch_unet: int, free: int, torch_cache: int = 0) -> bool:
    """Whether the ORT session must be released before a torch UNet of ``torch_unet`` bytes moves up."""
    return free + torch_cache < torch_unet + ACTIVATION_MARGIN


def weights_bytes(folder: str | os.PathLike, files) -> int:
    """Bytes of an artefact's model and weight files (what a session loads onto the device)."""
    return sum((Path(folder) / f).stat().st_size for f in files if (Path(folder) / f).exists())


def measure(device_id: int = 0) -> dict:
    """Free and total device memory, and torch's unused cache, in bytes (CUDA only; called when a session
    is made, never at import)."""
    import torch

    free, total = torch.cuda.mem_get_info(device_id)
    cache = torch.cuda.memory_reserved(device_id) - torch.cuda.memory_allocated(device_id)
    return {"free": int(free), "total": int(total), "torch_cache": int(max(cache, 0))}


def gpu_mem_limit_mb() -> int | None:
    value = os.environ.get(GPU_MEM_LIMIT_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def check_before_session(weights: int, device_id: int = 0, what: str = "the ONNX UNet") -> VramDecision:
    """Measure, decide and carry out the decision's "empty torch's cache"; raise ``OrtTurboError`` on refuse."""
    from .errors import OrtTurboError

    decision = plan_vram(weights=weights, what=what, gpu_mem_limit_mb=gpu_mem_limit_mb(), **measure(device_id))
    if decision.action == "refuse":
        raise OrtTurboError(decision.message)
    if decision.action == "empty-torch-cache":
        import torch

        torch.cuda.empty_cache()
    return decision
