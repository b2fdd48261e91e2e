"""``OrtUnet``: an artefact's ONNX UNet called like the WebUI's PyTorch UNet.

Torch tensors in (fp16 or fp32, on any device the provider can use), a torch tensor out with the
input's dtype and device. Each input is fed in the dtype the artefact declares for it (an fp16 artefact
takes its timestep in fp32: the time embedding is computed in fp32, as the WebUI does). Inputs the
artefact cannot serve raise ``UnsupportedInput`` with a reason a person can read, before anything runs;
the WebUI layer turns that into a PyTorch fallback.

The NaN guard: an fp16 artefact whose output is not finite (fp16 overflow, e.g. SD 2.x attention, which
would give a black image) raises :class:`NonFiniteOutput`, an ``UnsupportedInput``, so that call runs on
PyTorch; the artefact is remembered for the rest of the session and goes straight to PyTorch after that.
"""

from __future__ import annotations

import numpy as np
import torch

from . import heap
from .errors import UnsupportedInput
from .registry import Artefact
from .runner import TORCH_DTYPES, OrtRunner, finite
from .sessions import GraphThread, graph_policy, placement_report, plan_session, trt_ranges, unet_trt_profiles

#: ids of fp16 artefacts whose output overflowed in this session -> the message said
_OVERFLOWED: dict[str, str] = {}


class NonFiniteOutput(UnsupportedInput):
    """The fp16 artefact gave NaN/inf; ``first_time`` is True only the first time for that artefact."""

    def __init__(self, reason: str, first_time: bool):
        super().__init__(reason)
        self.first_time = first_time


def input_dtypes(manifest: dict) -> dict:
    """The torch dtype each graph input is fed in, from the manifest's ``io_types``."""
    return {n: TORCH_DTYPES[manifest["io_types"][n]] for n in manifest["input_names"]}


class OrtUnet(OrtRunner):
    def __init__(self, artefact: Artefact, *, device_id: int = 0, cuda_graph: bool = False,
                 intra_op_threads: int | None = None, cache_dir=None, trt_request: dict | None = None,
                 openvino_precision: str = "auto"):
        super().__init__(artefact, device_id=device_id, what="the ONNX UNet", needs="artefact")
        m = artefact.manifest
        self.io = m["io"]
        self.ranges = m["shape_ranges"]
        self.input_names = list(m["input_names"])
        self.output_name = m["output_name"]
        self.input_dtypes = input_dtypes(m)
        self.output_dtype = TORCH_DTYPES[m["io_types"][self.output_name]]
        trt_profiles = None
        if self.ep == "tensorrt":
            trt_profiles = unet_trt_profiles(m, trt_request)
            r = trt_ranges(m["shape_ranges"], trt_request)  # shapes outside the profile fall back
            self.ranges = {"batch": r["batch"], "height": [v // 8 for v in r["height_px"]],
                           "width": [v // 8 for v in r["width_px"]], "sequence": r["sequence"]}
        memcpy = (m.get("placement") or {}).get("memcpy_nodes")
        if cuda_graph and self.ep == "cuda" and memcpy is None:
            # not measured when the artefact was made (a toolchain without onnxruntime-gpu): graphs need it
            memcpy = placement_report(artefact.model_path, plan_session("cuda", device_id=device_id).providers)["memcpy_nodes"]
        self.graphs = graph_policy(cuda_graph, self.ep, memcpy)
        self.plan = plan_session(self.ep, manifest=m, device_id=device_id, stream=self.stream_handle,
                                 cuda_graph=self.graphs.use_graphs, intra_op_threads=intra_op_threads,
                                 cache_dir=cache_dir, trt_profiles=trt_profiles, cuda_options=self.cuda_options,
                                 openvino_precision=openvino_precision)
        #: weights given in place of the artefact's own (initializer -> numpy array ORT reads in place)
        self.replaced: dict = {}
        self.session, self.runner = self._open()
        self.device = self.device_for(self.plan)

    def _open(self):
        thread = GraphThread() if self.plan.io_binding and self.graphs.dedicated_thread else None
        return self.open(self.artefact.model_path, self.plan, self.output_name, graph_thread=thread,
                         initializers=self.replaced)

    def replace_weights(self, initializers: dict) -> None:
        """Rebuild the session with ``initializers`` (name -> numpy array) in place of the artefact's own
        weights of those names; ``{}`` goes back to the artefact's weights. The old session is dropped
        first, so two sessions' weights are never held at once. On an error the runner has no session
        (``session`` is None) and the error is raised."""
        self.release()
        self.replaced = {}  # the old copies go with the session that read them
        self.replaced = {name: np.ascontiguousarray(a) for name, a in initializers.items()}
        self.session, self.runner = self._open()
        heap.trim()  # what the new session did not reuse of the old one's memory, and its build temporaries

    def release(self) -> None:
        """Drop the session (its device memory goes back once nothing else holds it)."""
        if self.runner is not None and self.runner.graph_thread is not None:
            self.runner.graph_thread.close()
        self.session = self.runner = None

    # -- checks --------------------------------------------------------------------------------

    def check(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y=None) -> None:
        """Raise ``UnsupportedInput`` if this artefact cannot compute the UNet for these inputs."""
        io, r = self.io, self.ranges
        if x.ndim != 4:
            raise UnsupportedInput(f"the latent has {x.ndim} dimensions, expected 4 (B, C, H, W)")
        b, c, h, w = x.shape
        if c != io["in_channels"]:
            kind = "an inpainting" if c == 9 else "a"
            raise UnsupportedInput(
                f"{kind} model input with {c} channels; this artefact was exported for {io['in_channels']}")
        if context is None or context.ndim != 3 or context.shape[-1] != io["context_dim"]:
            width = None if context is None else tuple(context.shape)
            raise UnsupportedInput(
                f"text conditioning of shape {width}; this artefact takes width {io['context_dim']} "
                "(another model family, e.g. a refiner or a checkpoint of another kind?)")
        if io["adm_dim"]:
            if y is None:
                raise UnsupportedInput("no 'y' (pooled text and size) input; this SDXL-type artefact needs it")
            if y.ndim != 2 or y.shape[1] != io["adm_dim"]:
                raise UnsupportedInput(
                    f"'y' of shape {tuple(y.shape)}; this artefact takes width {io['adm_dim']} "
                    "(the SDXL refiner uses 2560, the base model 2816)")
        elif y is not None:
            raise UnsupportedInput("the model passed a 'y' input, which this artefact does not take")
        t_rows = timesteps.numel()
        rows = {"timesteps": t_rows, "context": context.shape[0]}
        if y is not None:
            rows["y"] = y.shape[0]
        for name, n in rows.items():
            if n != b and not (name == "timesteps" and n == 1):
                raise UnsupportedInput(f"batch mismatch: the latent has {b} rows, {name} has {n}")
        s = context.shape[1]
        for label, value, key in (("batch", b, "batch"), ("latent height", h, "height"),
                                  ("latent width", w, "width"), ("text length", s, "sequence")):
            lo, hi = r[key]
            if not lo <= value <= hi:
                px = " px" if key in ("height", "width") else ""
                scale = 8 if px else 1
                raise UnsupportedInput(
                    f"{label} {value * scale}{px} is outside this artefact's range "
                    f"{lo * scale}..{hi * scale}{px}")
        m = io["spatial_multiple"]
        if h % m or w % m:
            raise UnsupportedInput(f"latent size {h}x{w} is not a multiple of {m} (image sides must be "
                                   f"multiples of {8 * m} px)")

    # -- running -------------------------------------------------------------------------------

    def __call__(self, x, timesteps, context, y=None, **kwargs):
        return self.forward(x, timesteps, context, y=y, **kwargs)

    def feeds(self, x, timesteps, context, y=None) -> dict:
        """The graph's inputs, each in its own dtype on the session's device, contiguous."""
        b = x.shape[0]
        if timesteps.numel() == 1 and b > 1:
            timesteps = timesteps.reshape(1).expand(b)
        values = {"sample": x, "timestep": timesteps.reshape(b), "encoder_hidden_states": context, "y": y}
        return {n: values[n].to(self.device, self.input_dtypes[n]).contiguous() for n in self.input_names}

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y=None, **kwargs):
        if kwargs.get("control") is not None:
            raise UnsupportedInput("ControlNet residuals are not supported by the ONNX UNet yet")
        self.check(x, timesteps, context, y)
        if self.guarded and self.artefact.id in _OVERFLOWED:
            raise NonFiniteOutput(f"{_OVERFLOWED[self.artefact.id]} (seen earlier this session)", False)
        feeds = self.feeds(x, timesteps, context, y)
        out_shape = (x.shape[0], self.io["out_channels"], x.shape[2], x.shape[3])
        out = self.run_session(self.session, self.runner, feeds, self.output_name, out_shape, self.output_dtype)
        if self.guarded and not finite(out):
            message = (f"the fp16 ONNX UNet {self.artefact.id} gave NaN/inf (fp16 overflow); PyTorch runs this "
                       "model's UNet for the rest of the session")
            _OVERFLOWED[self.artefact.id] = message
            raise NonFiniteOutput(message, True)
        return out.to(x.device, x.dtype)
