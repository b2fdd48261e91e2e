"""Adapter tests: run in a WebUI-like environment (.venv-webui: gradio 3.41.2, fastapi 0.94,
pydantic 1, numpy 1.26.2, protobuf 3.20.0, onnxruntime 1.26.0, no Olive, no onnx) against the
stand-in of the WebUI API in tests/webui_stub. Optimization runs in a child process with the dev
environment (.venv) as the Olive toolchain, as it runs in a WebUI with the extension's toolchain."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "webui_stub"))
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "tests"))  # tests/sgm_unets.py

from modules import devices, errors, sd_unet, shared  # noqa: E402
from modules.sd_models import CheckpointInfo  # noqa: E402

from lib_ort.bench.architectures import build_unet  # noqa: E402
from lib_ort.describe import state_dict_digest  # noqa: E402
from lib_ort.optimize import Toolchain  # noqa: E402
from sgm_unets import CONFIGS as SGM_CONFIGS, build_sgm_unet  # noqa: E402

TOOLCHAIN_PYTHON = os.environ.get("ORT_TURBO_TOOLCHAIN_PYTHON", str(REPO / ".venv" / "bin" / "python"))


class StubVae(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, z):
        assert z.dtype == self.scale.dtype, "the WebUI casts latents to the VAE's dtype"
        return z * self.scale


class StubSdModel:
    """The loaded checkpoint as the extension sees it: a real ldm UNet (SD1/SD2) or the sgm stand-in's UNet
    (SDXL base and refiner, ``tiny-sgm-*``) behind the WebUI's routing."""

    def __init__(self, arch: str, filename: str, seed: int = 0):
        sgm = arch in SGM_CONFIGS
        self.unet = build_sgm_unet(arch, seed=seed) if sgm else build_unet(arch, seed=seed)
        self.model = types.SimpleNamespace(diffusion_model=self.unet)
        self.sd_checkpoint_info = CheckpointInfo(filename, state_dict_digest(self.unet))
        self.first_stage_model = StubVae().to(devices.dtype_vae)
        self.inpaint = self.unet.in_channels == 9
        self.is_sdxl = self.sgm = sgm  # a test may flag an SD2 model is_sdxl; its conds stay SD2's
        self.lowvram = False  # the WebUI sets it at load: True under --lowvram/--medvram
        if sgm:
            config = SGM_CONFIGS[arch]
            width = config["context_dim"]
            self.context_dim = width if isinstance(width, int) else width[0]
            self.refiner = config["adm_in_channels"] == 2560
            self.used_config = "sd_xl_refiner.yaml" if self.refiner else "sd_xl_base.yaml"
        else:
            self.context_dim = 96 if "sd2" in arch else 64
            self.used_config = "v2-inference.yaml" if "sd2" in arch else "v1-inference.yaml"
        self.rows_per_call: list[int] = []
        self.vectors: list[torch.Tensor] = []  # the 'vector' cond of each UNet call (SDXL)

    def encode(self, batch, length, generator, negative=False):
        text = torch.randn(batch, length, self.context_dim, generator=generator)
        if not self.sgm:
            return text
        return self.sdxl_conditioning(text, torch.randn(batch, 1280, generator=generator), negative)

    def sdxl_conditioning(self, text, pooled, negative, height=1024, width=1024, crop=(0, 0)):
        """What ``sd_models_xl.get_learned_conditioning`` gets from sgm's GeneralConditioner: 'crossattn' (the
        text encoders' hidden states) and 'vector' (OpenCLIP-G's pooled output, then each size number as a
        256-wide sinusoidal embedding: original size, crop, and the target size for the base, the aesthetic
        score for the refiner: 1280 + 6 * 256 = 2816, 1280 + 5 * 256 = 2560)."""
        from ldm.modules.diffusionmodules.util import timestep_embedding

        rows = text.shape[0]
        numbers = [[height, width], list(crop)]
        numbers.append([2.5 if negative else 6.0] if self.refiner else [height, width])  # the WebUI's aesthetic scores
        sizes = [timestep_embedding(torch.tensor(n, dtype=torch.float32).repeat(rows, 1).flatten(), 256).reshape(rows, -1)
                 for n in numbers]
        return {"crossattn": text, "vector": torch.cat([pooled, *sizes], dim=1)}

    def denoise(self, x, sigma, cond, image_cond):
        """k-diffusion's CompVisDenoiser: scale the input, fractional t, eps -> denoised."""
        self.rows_per_call.append(x.shape[0])
        s = sigma[:, None, None, None]
        x_in = x / torch.sqrt(s ** 2 + 1)
        if image_cond is not None:
            x_in = torch.cat([x_in, image_cond], dim=1)
        t = sigma * 60.0
        with torch.no_grad():
            if isinstance(cond, dict):  # sgm's OpenAIWrapper: context from 'crossattn', y from 'vector'
                self.vectors.append(cond["vector"])
                eps = self.unet(x_in, t, context=cond["crossattn"], y=cond["vector"])
            else:
                eps = self.unet(x_in, t, context=cond)
        return x - eps * s


@pytest.fixture(scope="session", autouse=True)
def webui_routing():
    """What sd_hijack does: route the ldm and sgm UNetModel classes' forward through sd_unet."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from sgm.modules.diffusionmodules.openaimodel import UNetModel as SgmUNetModel

    originals = {cls: cls.forward for cls in (UNetModel, SgmUNetModel)}
    for cls, forward in originals.items():
        cls.forward = sd_unet.create_unet_forward(forward)
    yield
    for cls, forward in originals.items():
        cls.forward = forward


@pytest.fixture(scope="session")
def extension(tmp_path_factory):
    """Load scripts/ort_turbo.py as the WebUI does (module name = file name)."""
    shared.data_path = str(tmp_path_factory.mktemp("webui-data"))
    os.environ["ORT_TURBO_HOME"] = str(tmp_path_factory.mktemp("artefacts"))
    os.environ["ORT_TURBO_DATA"] = str(tmp_path_factory.mktemp("ort-turbo-data"))
    spec = importlib.util.spec_from_file_location("ort_turbo", REPO / "scripts" / "ort_turbo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from lib_ort.webui import service

    service.toolchain = lambda progress=None: Toolchain(python=TOOLCHAIN_PYTHON)
    return module


@pytest.fixture(scope="session")
def sd2_model(extension):
    return StubSdModel("tiny-sd2", "models/Stable-diffusion/turbo/tiny-sd2.safetensors")


@pytest.fixture(scope="session")
def exported(extension, sd2_model):
    """The tiny SD2 checkpoint exported from the 'WebUI' and optimized for the CPU provider once."""
    from lib_ort.webui import service

    shared.sd_model = sd2_model
    return service.export_loaded_checkpoint("cpu")


@pytest.fixture()
def fresh_webui(extension, sd2_model):
    """A fresh config (no key set by the user), the tiny SD2 checkpoint loaded, no SD Unet active.

    The WebUI (and its stand-in) reports an exception raised by a script hook and goes on: a test would
    not see it fail. So every test ends by checking that nothing was reported; a test that makes a hook
    raise on purpose takes what it expects out of ``errors.exception_records`` itself."""
    shared.opts.data.clear()
    errors.exception_records.clear()
    shared.state = type(shared.state)()
    shared.cmd_opts.no_half = shared.cmd_opts.no_half_vae = False
    devices.dtype_vae = torch.float16
    shared.sd_model = sd2_model
    sd2_model.first_stage_model.to(devices.dtype_vae)
    sd2_model.rows_per_call.clear()
    from lib_ort.webui import service

    service.state.vae_reverted_to = None
    sd_unet.list_unets()
    sd_unet.apply_unet("None")
    yield shared
    reported = [f"{type(e).__name__}: {e}\n{tb}" for e, tb in errors.exception_records]
    errors.exception_records.clear()
    sd_unet.apply_unet("None")
    for name in [k for k, v in vars(sd2_model.unet).items() if k == "forward"]:
        delattr(sd2_model.unet, name)
    assert not reported, "the WebUI reported an exception from a script hook:\n" + "\n".join(reported)


def api_app(**cmd_opts):
    """The WebUI's FastAPI app after ``app_started``, started with the given command-line flags (``api``,
    ``nowebui``, ``api_auth``; default ``--api``); the flags are put back afterwards."""
    from fastapi import FastAPI
    from modules import script_callbacks

    flags = {"api": True, "nowebui": False, "api_auth": None, **cmd_opts}
    saved = {key: getattr(shared.cmd_opts, key) for key in flags}
    vars(shared.cmd_opts).update(flags)
    try:
        app = FastAPI()
        script_callbacks.app_started_callback(None, app)
        return app
    finally:
        vars(shared.cmd_opts).update(saved)


@pytest.fixture()
def no_toolchain(monkeypatch):
    """Fails the test if an export gets as far as the minutes-long optimization."""
    from lib_ort.webui import service

    def refuse(progress=None):
        raise AssertionError("the export went on to the toolchain")

    monkeypatch.setattr(service, "toolchain", refuse)


@pytest.fixture()
def client(fresh_webui, exported):
    """A client of a WebUI started with ``--api`` (no ``--api-auth``)."""
    from fastapi.testclient import TestClient

    return TestClient(api_app(), raise_server_exceptions=False)


def script_runner(extension, cfg_free=True):
    from modules.scripts import ScriptRunner

    return ScriptRunner([(extension.OrtTurboScript(), (cfg_free,))])
