"""The "ORT Turbo" entry of the WebUI's SD Unet list and the UNet it creates.

One option, labelled "ORT Turbo", follows the loaded checkpoint: its UNet uses the artefact exported
for that checkpoint's hash and the selected provider. Options compare equal by label, so refreshing
the list does not reload the session. For "Automatic", ``model_name`` answers the loaded checkpoint's
own ``model_name`` (sub-folders included) when an artefact exists for it, so the WebUI's exact match
picks ORT Turbo for exported checkpoints and nothing else.

Every call the artefact cannot serve runs the PyTorch UNet instead (moved back to the device if
``apply_unet`` had parked it on the CPU), and the reason goes to the job's report for the infotext.
"""

from __future__ import annotations

from modules import devices, sd_unet, shared

from .. import providers
from ..errors import ArtefactError, OrtTurboError, RuntimeUnavailable, UnsupportedInput
from ..unet import OrtUnet
from . import service, settings
from .job import current_job
from .networks import NetworkWeights

LABEL = "ORT Turbo"


class OrtTurboOption(sd_unet.SdUnetOption):
    label = LABEL

    @property
    def model_name(self):
        model = shared.sd_model
        info = getattr(model, "sd_checkpoint_info", None)
        if info is None:
            return None
        try:
            return info.model_name if service.find_served_artefact(info)[0] is not None else None
        except Exception:  # "Automatic" must never fail the WebUI's selection: no match is the answer
            return None

    def create_unet(self):
        return OrtTurboUnet()

    def __eq__(self, other):
        return isinstance(other, OrtTurboOption) and other.label == self.label

    def __hash__(self):
        return hash(("ort-turbo", self.label))


def list_unets(res: list) -> None:
    res.append(OrtTurboOption())


def is_ours_active() -> bool:
    return isinstance(sd_unet.current_unet, OrtTurboUnet)


def is_selected() -> bool:
    """Whether the SD Unet setting (with the job's ``override_settings``) resolves to ORT Turbo for the loaded
    checkpoint: known from the script's ``process`` hook on, before the WebUI applies the SD Unet."""
    try:
        return isinstance(sd_unet.get_unet_option(), OrtTurboOption)
    except Exception:
        return False


def model_loaded_mid_job(sd_model) -> None:
    """``on_model_loaded``: a checkpoint loaded while a job runs (the refiner) gets the SD Unet applied again.

    The WebUI's refiner switch goes through ``reload_model_weights``, which first sets the SD Unet to "None";
    when the refiner has another config than the base (SDXL base -> refiner always has), it loads the model
    anew and never applies the SD Unet again, so the refiner's steps would run on PyTorch while the
    infotext named the base's artefact. Applied here, the chosen option follows the new checkpoint: its own
    artefact, or a PyTorch fallback with the reason. Outside a job the WebUI applies it itself at the next
    generation. Never raises (the WebUI reports a failing callback and goes on loading)."""
    if not current_job().running:
        return
    try:
        sd_unet.apply_unet()
    except Exception as exc:
        service.log(f"could not apply the SD Unet to the checkpoint loaded mid-job ({type(exc).__name__}: {exc})")


class OrtTurboUnet(sd_unet.SdUnet):
    def __init__(self):
        super().__init__()
        self.key = None
        self.ort: OrtUnet | None = None
        self.artefact = None
        self.unavailable: str | None = None
        self.retry = True
        self.torch_unet_on_device = False
        self.networks = NetworkWeights()

    # -- binding to the loaded checkpoint ---------------------------------------------------------

    def activate(self):
        """Called by the WebUI's ``apply_unet`` inside ``process_images``: it must never raise, or the job is lost
        and the WebUI keeps this UNet as the current one."""
        reason = self.bind()
        if reason:
            service.log(f"PyTorch UNet will run: {reason}")

    def deactivate(self):
        self.ort = None
        self.artefact = None
        self.key = None
        self.unavailable = None

    def bind(self) -> str | None:
        """Load the artefact for the loaded checkpoint and provider if they changed; the reason if none.

        Never raises. The key is stored together with the outcome (a session, or the reason there is none),
        so a failure is reported the same way by every later call until something in the key changes: the
        checkpoint, the provider, the settings or the registry (an export or a delete bumps its generation),
        or until the runner loses its session (``NetworkWeights`` could not put any weights back).
        """
        try:
            info = shared.sd_model.sd_checkpoint_info
            eps = tuple(service.providers_to_try())  # the chosen provider first
            ep = eps[0]
            graphs = bool(getattr(shared.opts, settings.CUDA_GRAPHS, False))
            openvino = settings.openvino_precision(shared.opts) if ep == "openvino" else None
            key = (info.filename, getattr(info, "sha256", None), eps, graphs, openvino, service.registry_generation())
        except Exception as exc:
            self.key, self.ort, self.artefact, self.retry = None, None, None, True
            self.unavailable = f"ORT Turbo cannot read the loaded checkpoint or its settings ({type(exc).__name__}: {exc})"
            return self.unavailable
        if key == self.key and (self.ort is None or self.ort.session is not None):
            return self.unavailable
        # (a runner without a session, left by a failed weight replacement, is bound anew: same key or not)
        ort = artefact = reason = None
        retry = True  # what failed is cheap to look at again (files, the registry, an import)
        try:
            artefact, served = service.find_served_artefact(info, eps)  # the providers of the key
            if artefact is None:
                reason = f"no {providers.label(ep)} artefact for {info.title}; export it in the ORT Turbo tab"
            else:
                ort = OrtUnet(artefact, cuda_graph=graphs and served == "cuda", openvino_precision=openvino or "auto")
        except (ArtefactError, RuntimeUnavailable) as exc:
            reason = str(exc)
        except OrtTurboError as exc:  # the session itself: retried when the key changes, not at every job
            reason, retry = str(exc), False
        except Exception as exc:
            name = artefact.id if artefact is not None else "the artefact"
            reason, retry = f"ONNX Runtime could not load {name} ({type(exc).__name__}: {exc})", False
        self.key, self.ort, self.unavailable, self.retry = key, ort, reason, retry
        self.artefact = artefact if ort is not None else None
        return reason

    def recheck(self) -> None:
        """Before each batch: look again at what may have changed behind the registry's back (the artefact's
        files deleted or replaced; an artefact or onnxruntime that appeared), so the next call binds anew."""
        if self.artefact is not None:
            try:
                service.registry().load(self.artefact.folder, self.artefact.checkpoint_hash)
            except Exception:
                self.key = None  # bind again: it finds what is there now and says why
        elif self.unavailable and self.retry:
            self.key = None

    # -- calls ---------------------------------------------------------------------------------

    def forward(self, x, timesteps, context, *args, **kwargs):
        job = current_job()
        reason = job.forced_fallback or self.bind()
        if reason is None and self.ort is None:  # cannot happen after bind(); never call None if it does
            reason = "ORT Turbo has no session for this checkpoint"
        if reason is None:
            reason = self.networks.sync(self.ort, shared.sd_model.model.diffusion_model)
        if reason is None:
            try:
                out = self.ort(x, timesteps, context, y=kwargs.get("y"), control=kwargs.get("control"))
                job.ran_on_ort(self.ort)
                return out
            except UnsupportedInput as exc:
                reason = exc.reason
            except Exception as exc:  # an ONNX Runtime failure must not end the user's generation
                reason = f"ONNX Runtime failed ({type(exc).__name__}: {exc})"
        job.fell_back(reason)
        return self.torch_forward(x, timesteps, context, *args, **kwargs)

    def torch_forward(self, x, timesteps, context, *args, **kwargs):
        unet = shared.sd_model.model.diffusion_model
        self.ensure_torch_unet_on_device(unet)
        routed = sd_unet.current_unet
        sd_unet.current_unet = None  # the class-level forward would route the call back to us
        try:
            return unet(x, timesteps, context, *args, **kwargs)
        finally:
            sd_unet.current_unet = routed

    def ensure_torch_unet_on_device(self, unet) -> None:
        if getattr(shared.sd_model, "lowvram", False):
            return  # --lowvram/--medvram hooks bring each block to the device as it runs; apply_unet leaves it too
        param = next(unet.parameters())
        if param.device != devices.device:
            self.release_session_if_vram_short(unet)
            unet.to(devices.device)
            self.torch_unet_on_device = True

    def release_session_if_vram_short(self, unet) -> None:
        """Free the ORT session before the torch UNet moves up when both would not fit (lib_ort.vram); the
        rest of the job runs on PyTorch, and the session is loaded again once the torch UNet is parked."""
        if self.ort is None or getattr(devices.device, "type", None) != "cuda":
            return
        from ..vram import measure, must_release_session

        size = sum(p.numel() * p.element_size() for p in unet.parameters())
        try:
            room = {k: v for k, v in measure(devices.device.index or 0).items() if k != "total"}
        except Exception as exc:  # no reading, no release: the move itself will say if memory runs out
            service.log(f"could not read free VRAM ({type(exc).__name__}: {exc}); the ONNX UNet stays loaded")
            return
        if must_release_session(torch_unet=size, **room):
            service.log("released the ONNX UNet's GPU memory for the PyTorch UNet (not enough VRAM for both)")
            self.ort.release()
            self.ort = None
            self.unavailable = "the ONNX UNet was released to make room for the PyTorch UNet (not enough VRAM for both)"

    def park_torch_unet(self) -> None:
        """Give the PyTorch UNet's device memory back once ORT serves the job again."""
        if self.torch_unet_on_device and devices.device != devices.cpu:
            shared.sd_model.model.diffusion_model.to(devices.cpu)
            devices.torch_gc()
            if self.ort is None:
                self.key = None  # a session released or refused for lack of VRAM: try again with the room back
        self.torch_unet_on_device = False
