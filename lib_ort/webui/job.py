"""Per-generation state: CFG-free, the fp16 VAE, forced fallbacks and what goes into the infotext.

CFG-free uses the WebUI's own switch (``skip_early_cond = 1.0`` makes the CFG denoiser skip the
unconditional rows at every step), but never through ``override_settings``: the WebUI restores only
override keys that were already in ``opts.data``, so on a fresh install the value would stay set and
every later CFG-7 generation would silently ignore its negative prompt. Nor through ``opts.data`` at
all: that dict is config.json, and any save during the job (``POST /sdapi/v1/options``, Apply settings,
a quicksetting) would write the job's value there for good. ``OptionScope`` shadows the values for
reading only (see there) and is removed at ``postprocess``, at ``p.close()`` (which the WebUI calls
also when a job fails), at the start of the next job and when the extension is unloaded.
"""

from __future__ import annotations

import torch

from modules import devices, shared

from .. import providers
from . import service, settings

INFOTEXT_KEY = "ORT Turbo"
INFOTEXT_CFG_FREE = "ORT Turbo CFG-free"
#: what the WebUI's CFG denoiser writes when ``skip_early_cond`` is set; pasted back, it becomes an
#: "Override settings" entry that outlives the job (see the module docstring)
WEBUI_SKIP_EARLY_CFG = "Skip Early CFG"
_MISSING = object()


class OptionScope:
    """Shadow some ``shared.opts`` values for one job without touching ``opts.data``.

    The WebUI's ``Options`` answers ``opts.key`` from ``__getattr__``, which Python calls only when the
    instance has no attribute of that name: an instance attribute therefore wins for every reader
    (the CFG denoiser, the samplers), while ``opts.data``, what ``opts.save`` writes and ``opts.set``
    changes, keeps the user's values. Removing the attributes brings the user's values back, whatever
    was set or saved meanwhile."""

    def __init__(self, values: dict):
        self.values = values
        self.applied = False

    def apply(self) -> None:
        vars(shared.opts).update(self.values)
        self.applied = True

    def restore(self) -> None:
        if not self.applied:
            return
        shadowed = vars(shared.opts)
        for key in self.values:
            shadowed.pop(key, None)
        self.applied = False


class VaeScope:
    """Switch the VAE to fp16 or fp32 for one job, as the setting says, within the WebUI's rules.

    ``--no-half``/``--no-half-vae`` always win. If the WebUI's NaN auto-revert moves the VAE to fp32 (or to
    bfloat16, with its "convert VAE to bfloat16" setting) during a job, its decision stands for the rest of
    the session.
    """

    def __init__(self):
        self.previous = None
        self.applied = None
        self.wanted = None  # the dtype this job asked for, whether or not it had to switch to it

    def target(self) -> torch.dtype:
        want_fp16 = bool(getattr(shared.opts, settings.FP16_VAE, True))
        flags = shared.cmd_opts
        if want_fp16 and (getattr(flags, "no_half", False) or getattr(flags, "no_half_vae", False)):
            return torch.float32
        if want_fp16 and service.state.vae_reverted_to is not None:
            return service.state.vae_reverted_to
        return torch.float16 if want_fp16 else torch.float32

    def apply(self, sd_model) -> list[str]:
        notes = []
        target = self.wanted = self.target()
        if target == torch.float16 and getattr(sd_model, "is_sdxl", False) and _stock_vae():
            notes.append("the stock SDXL VAE overflows in fp16 (black or NaN images); use the sdxl-vae-fp16-fix "
                         "VAE or turn off 'fp16 VAE' in Settings > ORT Turbo")
        if devices.dtype_vae != target:
            self.previous = devices.dtype_vae
            self.applied = target
            devices.dtype_vae = target
            sd_model.first_stage_model.to(target)
        return notes

    def restore(self, sd_model) -> None:
        if self.wanted is None:
            return
        if self.wanted == torch.float16 and devices.dtype_vae != torch.float16:
            service.state.vae_reverted_to = devices.dtype_vae  # the NaN auto-revert ran: keep its VAE dtype
            name = str(devices.dtype_vae).replace("torch.", "")
            service.log(f"the WebUI reverted the VAE to {name} after NaNs; ORT Turbo keeps it so this session")
        elif self.applied is not None:
            devices.dtype_vae = self.previous
            if sd_model is not None:
                sd_model.first_stage_model.to(self.previous)
        self.applied = self.previous = self.wanted = None


def _stock_vae() -> bool:
    try:
        from modules import sd_vae

        return getattr(sd_vae, "loaded_vae_file", None) is None
    except ImportError:
        return True


class Job:
    """What one generation did: ORT calls, fallbacks and why, the scopes to undo."""

    def __init__(self):
        self.forced_fallback: str | None = None
        self.ort_calls = 0
        self.fallback_calls = 0
        self.reasons: list[str] = []
        #: the artefacts that served this job, in order (a refiner switch brings its checkpoint's own), each as
        #: (id, what it ran on: ``OrtRunner.runs_on``)
        self.artefacts: list[tuple[str, str]] = []
        #: between ``start_job`` and its end: a checkpoint loaded now is loaded mid-job (the refiner)
        self.running = False
        #: the loaded checkpoint's title and whether an ORT Turbo UNet served it, when the batch started
        self.batch_start: tuple[str, bool] | None = None
        self.options: OptionScope | None = None
        self.vae: VaeScope | None = None
        self.sd_model = None
        self.warned = False
        self.unwrap_close = None
        #: the VAE's decode/encode through ORT for this job (``lib_ort.webui.vae.VaeRoute``), or why not
        self.vae_route = None
        self.vae_unavailable: str | None = None
        self.vae_failed = False  # ``vae_unavailable`` is an error, not just "no export"

    def ran_on_ort(self, runner) -> None:
        """``runner`` (an ``OrtUnet``) served one UNet call."""
        self.ort_calls += 1
        if all(served != runner.id for served, _ in self.artefacts):
            self.artefacts.append((runner.id, runner.runs_on))

    def fell_back(self, reason: str) -> None:
        self.fallback_calls += 1
        if reason not in self.reasons:
            self.reasons.append(reason)
            service.log(f"PyTorch UNet used: {reason}")

    def infotext(self) -> str | None:
        if self.fallback_calls:
            prefix = "PyTorch fallback" if not self.ort_calls else "partly PyTorch"
            return f"{prefix}: {'; '.join(self.reasons)}"
        if self.ort_calls:
            return " + ".join(f"{served} ({runs_on})" for served, runs_on in self.artefacts)
        return None

    def restore(self) -> None:
        """Put back everything this job changed (idempotent): on ``p.close`` (finish, failure,
        interruption), at the next job's start and when the extension is unloaded."""
        self.running = False
        if self.vae_route is not None:
            self.vae_route.restore()
            self.vae_route = None
        self.vae_unavailable, self.vae_failed = None, False
        if self.options is not None:
            self.options.restore()
            self.options = None
        if self.vae is not None:
            self.vae.restore(self.sd_model)
            self.vae = None


def current_job() -> Job:
    if service.state.job is None:
        service.state.job = Job()
    return service.state.job


def start_job(p, cfg_free: bool) -> Job:
    """Called from ``before_process``: undo a job that never finished, then set this one up."""
    current_job().restore()
    job = service.state.job = Job()
    job.sd_model = shared.sd_model
    job.running = True
    # first: the WebUI reports a raising hook and goes on, so whatever is set below must still be undone
    job.unwrap_close = run_on_close(p, job.restore)
    values = {}
    if cfg_free and bool(getattr(shared.opts, settings.CFG_FREE, True)) and p.cfg_scale == 1:
        values["skip_early_cond"] = 1.0
        if getattr(job.sd_model.model.diffusion_model, "in_channels", 4) == 9:
            values["batch_cond_uncond"] = False  # the WebUI does not trim image_cond when it skips
        p.extra_generation_params[INFOTEXT_CFG_FREE] = True
    second_pass = getattr(p, "enable_hr", False) or getattr(p, "init_images", None) is not None
    if second_pass and p.steps <= 4 and not shared.opts.img2img_fix_steps:
        # at 1-4 steps the WebUI would otherwise run int(denoise * steps) steps: 0 at 1 step
        values["img2img_fix_steps"] = True
    if values:
        job.options = OptionScope(values)
        job.options.apply()
    return job


def set_vae_dtype(p, ours_selected: bool) -> None:
    """From the script's ``process`` hook, once ``override_settings`` are applied: the "fp16 VAE" setting is
    ORT Turbo's, so it switches the VAE only for a job whose SD Unet is ORT Turbo; with any other (None
    included) the VAE stays in the dtype the WebUI gave it."""
    job = current_job()
    if not ours_selected or not job.running or job.vae is not None:
        return
    job.vae = VaeScope()
    for note in job.vae.apply(job.sd_model):
        service.log(note)
        comment_under_image(p, f"ORT Turbo: {note}")


def run_on_close(p, undo):
    """Run ``undo`` when ``p.close()`` runs (the WebUI calls it when a job ends, also on errors), before
    the WebUI's own close. Returns what puts ``p.close`` back as it was (for an unloaded extension)."""
    saved = vars(p).get("close", _MISSING)
    original = p.close

    def close(*args, **kwargs):
        try:
            undo()
        finally:
            return original(*args, **kwargs)

    p.close = close

    def unwrap():
        if vars(p).get("close") is not close:
            return  # wrapped again since, by someone else: leave theirs; ours only runs ``undo`` (idempotent)
        if saved is _MISSING:
            del p.close
        else:
            p.close = saved

    return unwrap


def comment_under_image(p, text: str) -> None:
    if hasattr(p, "comment"):
        p.comment(text)


def forced_fallback_reason(p) -> str | None:
    """What in this batch the ONNX UNet would silently ignore, or None."""
    networks = getattr(p, "extra_network_data", None) or {}
    if networks.get("hypernet"):
        # a hypernetwork changes attention's inputs inside the PyTorch UNet's forward, not its weights
        return "hypernetworks patch the PyTorch UNet's attention, which the artefact does not have"
    # Lora networks (LoRA, LyCORIS) are weight deltas: webui.networks applies them to the ONNX UNet
    unet = shared.sd_model.model.diffusion_model
    if "forward" in vars(unet):
        return "ControlNet or another extension replaced the UNet's forward"
    if getattr(p, "tiling", False):
        return "tiling changes the UNet's padding, which the artefact does not have"
    ratio = p.get_token_merging_ratio() if hasattr(p, "get_token_merging_ratio") else 0
    if ratio:
        return "token merging patches the PyTorch UNet"
    return None


def _checkpoint_title() -> str:
    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    return getattr(info, "title", None) or "the loaded checkpoint"


def before_batch(p, ours_active: bool, unet) -> None:
    job = current_job()
    job.batch_start = (_checkpoint_title(), ours_active)
    if not ours_active:
        return
    unet.recheck()
    job.forced_fallback = forced_fallback_reason(p)
    if job.forced_fallback:
        # ControlNet and friends call the PyTorch blocks directly: they must be on the device
        unet.ensure_torch_unet_on_device(shared.sd_model.model.diffusion_model)
        job.fell_back(job.forced_fallback)
    else:
        unet.park_torch_unet()


def pasted_cfg_free(params: dict):
    """The accordion's checkbox from a pasted infotext; None (left as it is) when the image does not say."""
    if INFOTEXT_CFG_FREE not in params:
        return None
    return str(params[INFOTEXT_CFG_FREE]) == "True"


def note_checkpoint_switch(job: Job, ours_active: bool) -> None:
    """A checkpoint loaded during the batch (the refiner) and only one of the two served by an ORT Turbo UNet:
    the other's steps ran on PyTorch, and the infotext says so rather than naming only the artefact.

    With SD Unet "ORT Turbo" both are ours (a checkpoint without an artefact falls back call by call, with its
    reason); this covers "Automatic", which picks ORT Turbo only for a checkpoint that has an artefact."""
    if job.batch_start is None:
        return
    start_title, start_ours = job.batch_start
    title = _checkpoint_title()
    if title == start_title or start_ours == ours_active:
        return
    unserved = start_title if ours_active else title
    option = getattr(shared.opts, "sd_unet", "Automatic")
    job.fell_back(f"{unserved} ran on the PyTorch UNet (SD Unet '{option}' chose no ORT Turbo UNet for it: "
                  f"no {providers.label(service.provider())} artefact)")


def after_batch(p, ours_active: bool) -> None:
    job = current_job()
    note_checkpoint_switch(job, ours_active)
    text = job.infotext()
    if text is not None:
        p.extra_generation_params[INFOTEXT_KEY] = text
    if job.options is not None and "skip_early_cond" in job.options.values:
        # ORT Turbo set it, and INFOTEXT_CFG_FREE records it: never an override on paste
        p.extra_generation_params.pop(WEBUI_SKIP_EARLY_CFG, None)
    if job.fallback_calls and not job.warned:
        job.warned = True
        comment_under_image(p, f"ORT Turbo: the PyTorch UNet ran ({'; '.join(job.reasons)})")


def finish_job() -> None:
    current_job().restore()


def unload() -> None:
    """The extension is unloaded or disabled: put back every option, the VAE dtype and ``p.close``."""
    job = current_job()
    job.restore()
    if job.unwrap_close is not None:
        job.unwrap_close()
        job.unwrap_close = None
