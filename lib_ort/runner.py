"""``OrtRunner``: what every ONNX part runner (``OrtUnet``, ``OrtVae``) does around ONNX Runtime.

The provider check, the CUDA pre-flight (a CUDA torch, the VRAM check before the weights are loaded),
the dedicated non-zero stream ORT runs on (see ``sessions.StreamOrder``), the session with IO binding on
the GPU, each input fed in the dtype the artefact declares (``io_types``), and the fp16 NaN guard's test.
A part's runner adds only its own input checks and output shape.
"""

from __future__ import annotations

import torch

from . import providers
from .errors import OrtTurboError
from .registry import Artefact
from .sessions import CudaRunner, create_session, require_provider

TORCH_DTYPES = {"FLOAT": torch.float32, "FLOAT16": torch.float16}


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


class OrtRunner:
    """Base of the part runners; ``what`` names the model in errors ("the ONNX UNet")."""

    def __init__(self, artefact: Artefact, *, device_id: int = 0, what: str, needs: str):
        self.artefact = artefact
        self.ep = artefact.ep
        self.device_id = device_id
        self.guarded = artefact.manifest.get("precision", "fp32") != "fp32"
        require_provider(self.ep)
        self.plan = None  # the part runner's session plan
        self.stream = None
        self.vram = None
        if self.ep in ("cuda", "tensorrt"):
            if not torch.cuda.is_available():
                raise OrtTurboError(f"the {self.ep} {needs} needs a CUDA build of torch with a GPU; this torch has none")
            from .vram import check_before_session, weights_bytes

            m = artefact.manifest
            self.vram = check_before_session(weights_bytes(artefact.folder, [m["model_file"], *m.get("data_files", [])]),
                                             device_id, what=what)
            # a dedicated, non-zero stream: handle 0 would leave ORT unordered on its own stream
            self.stream = torch.cuda.Stream(device=device_id)

    @property
    def id(self) -> str:
        return self.artefact.id

    @property
    def cuda_options(self) -> dict | None:
        return self.vram.provider_options if self.vram is not None else None

    @property
    def stream_handle(self):
        return self.stream.cuda_stream if self.stream is not None else None

    @property
    def runs_on(self) -> str:
        """The provider as a user reads it, with the arithmetic chosen at load time where the artefact does not
        fix it ("OpenVINO (CPU), bf16": its images differ slightly from an fp32 run's)."""
        precision = self.plan.precision if self.plan is not None else None
        return f"{providers.label(self.ep)}, {precision}" if precision else providers.label(self.ep)

    def device_for(self, plan) -> torch.device:
        return torch.device("cuda", self.device_id) if plan.io_binding else torch.device("cpu")

    def open(self, model_path, plan, output_name: str, graph_thread=None, initializers: dict | None = None):
        """(session, CudaRunner or None): IO binding on the GPU, plain numpy runs on the CPU;
        ``initializers`` as in ``sessions.create_session``."""
        session = create_session(model_path, plan, initializers)
        runner = (CudaRunner(session, plan, output_name, ort_stream=self.stream, graph_thread=graph_thread)
                  if plan.io_binding else None)
        return session, runner

    @staticmethod
    def run_session(session, runner, feeds: dict, output_name: str, out_shape: tuple, out_dtype) -> torch.Tensor:
        """Run once: bound torch buffers on the GPU; on the CPU zero-copy numpy views in, ORT's array out."""
        if runner is not None:
            return runner.run(feeds, out_shape, out_dtype)
        return torch.from_numpy(session.run([output_name], {n: t.numpy() for n, t in feeds.items()})[0])
