"""``OrtVae``: a VAE artefact called like the WebUI's ``first_stage_model``, and the fp16 NaN guard.

``decode(z)`` takes what ``first_stage_model.decode`` takes (latents [B, 4, h, w], already divided by
the model's scale factor) and returns what it returns (images [B, 3, 8h, 8w] in about [-1, 1]);
``encode_moments(x)`` takes images in [-1, 1] and returns the posterior's mean and log-variance
[B, 8, H/8, W/8], which the WebUI side wraps in the distribution its model expects. Tensors come
back in the input's dtype and on its device. Inputs the artefact cannot serve raise
``UnsupportedInput`` before anything runs.

``GuardedDecoder`` is the NaN guard: the stock SDXL VAE overflows in fp16 and gives NaN/inf, which
would be a black image. When an fp16 decode is not finite it decodes again in fp32 (the fp32 ORT
artefact if there is one, else the caller's PyTorch decode), says so once, and remembers the VAE's
hash so later decodes of that VAE go straight to fp32 for the rest of the session.
"""

from __future__ import annotations

import threading

import torch

from .errors import OrtTurboError, UnsupportedInput
from .registry import Artefact
from .runner import TORCH_DTYPES, OrtRunner, finite
from .sessions import plan_session, vae_trt_profiles


class OrtVae(OrtRunner):
    def __init__(self, artefact: Artefact, *, device_id: int = 0, intra_op_threads: int | None = None,
                 openvino_precision: str = "auto"):
        m = artefact.manifest
        if m.get("kind") != "vae":
            raise OrtTurboError(f"{artefact.id} is not a VAE artefact")
        super().__init__(artefact, device_id=device_id, what="the ONNX VAE", needs="VAE")
        self.description = m["description"]
        self.precision = m["precision"]
        self.vae_hash = m["vae"]["hash"]
        self.intra_op_threads = intra_op_threads
        self.openvino_precision = openvino_precision
        self.plan = self._plan(None)
        self.device = self.device_for(self.plan)
        self._sessions: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._part("decoder")  # fail now, not in the middle of a generation, if the decoder cannot load

    def _plan(self, part: str | None):
        """The session plan (per part: TensorRT needs the part's own profile). On the GPU the arena gives
        its memory back after each run: VAE activations are large and needed once per image."""
        profiles = None
        if self.ep == "tensorrt" and part is not None:
            d, decoder = self.description, part == "decoder"
            profiles = vae_trt_profiles(self.artefact.manifest["parts"][part]["input_name"],
                                        d["latent_channels"] if decoder else d["image_channels"],
                                        d["scale"] if decoder else 1)
        return plan_session(self.ep, device_id=self.device_id, stream=self.stream_handle,
                            intra_op_threads=self.intra_op_threads, trt_profiles=profiles, cuda_options=self.cuda_options,
                            cpu_memory_arena=False,  # 512² activations: faster without the arena on CPU
                            shrink_arena=self.ep in ("cuda", "tensorrt"), openvino_precision=self.openvino_precision)


    def _part(self, part: str):
        """(session, runner or None, input dtype, output dtype, output name), created on first use."""
        with self._lock:
            if part not in self._sessions:
                spec = self.artefact.manifest["parts"].get(part)
                if spec is None:
                    raise UnsupportedInput(f"the VAE artefact {self.id} has no {part}; export the VAE again")
                session, runner = self.open(self.artefact.folder / spec["model_file"], self._plan(part),
                                            spec["output_name"])
                types = spec["io_types"]
                self._sessions[part] = (session, runner, TORCH_DTYPES[types[spec["input_name"]]],
                                        TORCH_DTYPES[types[spec["output_name"]]], spec["input_name"],
                                        spec["output_name"])
            return self._sessions[part]

    def _run(self, part: str, x: torch.Tensor, out_shape: tuple) -> torch.Tensor:
        session, runner, in_dtype, out_dtype, in_name, out_name = self._part(part)
        feed = x.to(self.device, in_dtype).contiguous()
        out = self.run_session(session, runner, {in_name: feed}, out_name, out_shape, out_dtype)
        return out.to(x.device, x.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        d = self.description
        if z.ndim != 4 or z.shape[1] != d["latent_channels"]:
            raise UnsupportedInput(f"latents of shape {tuple(z.shape)}; this VAE decodes "
                                   f"[B, {d['latent_channels']}, h, w]")
        b, _, h, w = z.shape
        return self._run("decoder", z, (b, d["image_channels"], h * d["scale"], w * d["scale"]))

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        d = self.description
        if x.ndim != 4 or x.shape[1] != d["image_channels"]:
            raise UnsupportedInput(f"images of shape {tuple(x.shape)}; this VAE encodes [B, {d['image_channels']}, H, W]")
        b, _, h, w = x.shape
        s = d["scale"]
        if h % s or w % s:
            raise UnsupportedInput(f"image size {h}x{w} is not a multiple of {s}")
        return self._run("encoder", x, (b, 2 * d["latent_channels"], h // s, w // s))


# -- the NaN guard ---------------------------------------------------------------------------------

#: VAE hashes whose fp16 decode gave NaN/inf in this session -> the VAE's name
_FP16_OVERFLOWS: dict[str, str] = {}


def fp16_overflowed(vae_hash: str) -> bool:
    return vae_hash in _FP16_OVERFLOWS


def forget_fp16_overflows() -> None:
    _FP16_OVERFLOWS.clear()


class GuardedDecoder:
    """Decode with ``fast`` (an fp16 ``OrtVae`` or any ``OrtVae``); never return NaN/inf from an fp16 decode.

    ``fp32`` is an fp32 ``OrtVae`` of the same VAE or None; ``torch_decode(z)`` decodes in PyTorch fp32
    (the caller's VAE); ``notify(message, first_time)`` receives what happened, ``first_time`` True only the
    first time the VAE overflows in this session (for the console). ``last_source`` says which decoder
    produced the last result: ``"ort"``, ``"ort-fp32"`` or ``"torch-fp32"``.
    """

    def __init__(self, fast: OrtVae, *, vae_name: str, torch_decode, fp32: OrtVae | None = None, notify=None):
        self.fast = fast
        self.fp32 = fp32
        self.vae_name = vae_name
        self.torch_decode = torch_decode
        self.notify = notify or (lambda message, first_time: None)
        self.last_source: str | None = None

    @property
    def vae_hash(self) -> str:
        return self.fast.vae_hash

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        guarded = self.fast.guarded
        if guarded and fp16_overflowed(self.vae_hash):
            self.notify(self._remembered(), False)
            return self._decode_fp32(z)
        out = self.fast.decode(z)
        if not guarded or finite(out):
            self.last_source = "ort"
            return out
        first_time = self.vae_hash not in _FP16_OVERFLOWS
        _FP16_OVERFLOWS[self.vae_hash] = self.vae_name
        self.notify(f"the fp16 VAE {self.vae_name} gave NaN/inf (it overflows in fp16); decoded again in fp32, and "
                    f"this VAE stays fp32 for the rest of the session", first_time)
        return self._decode_fp32(z)

    def _remembered(self) -> str:
        return f"the VAE {self.vae_name} overflows in fp16 (seen earlier this session): decoded in fp32"

    def _decode_fp32(self, z: torch.Tensor) -> torch.Tensor:
        """The fp32 image stays fp32: casting it back to fp16 could overflow again (the WebUI converts
        every decoded image to fp32 afterwards anyway)."""
        if self.fp32 is not None:
            out = self.fp32.decode(z.float())
            if finite(out):
                self.last_source = "ort-fp32"
                return out
        self.last_source = "torch-fp32"
        return self.torch_decode(z.float())
