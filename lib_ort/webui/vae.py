"""The WebUI's VAE on ONNX Runtime: export the loaded VAE, and route the job's decode/encode through it.

What is replaced, and why there: ``first_stage_model.decode`` and ``.encode`` of the loaded model, as
instance attributes, for one job. Every full-VAE path of the WebUI ends there (``decode_first_stage``
after ``decode_latent_batch`` / ``samples_to_images_tensor``; ``encode_first_stage`` in
``images_tensor_to_samples`` for img2img and hires), with the WebUI's own scaling, casting and NaN
check around it, so the tensors in and out are the PyTorch VAE's. TAESD and the approximate decoders
never call them, so a decode method the user picked is left alone. The attributes are removed at
``postprocess``, at ``p.close()`` (also when a job fails) and, as a last resort, when the next job starts.

When: ORT Turbo is the selected SD Unet (checked when the job starts, and again at every call, so
another SD Unet that became active is never bypassed), the "VAE on ONNX Runtime" setting is on, and
an artefact exists for the loaded checkpoint, the loaded VAE (its own hash: a VAE picked in the VAE
dropdown is another VAE) and the provider, in the precision the "fp16 VAE" setting chooses. Anything
else, or any ONNX Runtime failure, runs the PyTorch VAE. The infotext records what decoded, in a few
words that paste back cleanly; the reason and what to do go to the console (once) and under the image.
"""

from __future__ import annotations

import os
import shutil
import threading

import torch

from modules import sd_unet, shared

from .. import providers
from ..errors import OrtTurboError, UnsupportedInput
from ..optimize import optimize_export
from ..parts.vae import VAE, export_vae
from ..pipeline import find_vae_artefact
from ..recipes import vae_precision
from ..vae import GuardedDecoder, OrtVae
from . import service, settings
from .job import comment_under_image, current_job
from .unet import is_selected

INFOTEXT_KEY = "ORT Turbo VAE"
_MISSING = object()
_hashes: dict[tuple, str] = {}
_runners: dict[tuple, OrtVae] = {}
_lock = threading.Lock()


# -- which VAE is loaded ---------------------------------------------------------------------------

def _loaded_vae_file() -> str | None:
    try:
        from modules import sd_vae
    except ImportError:
        return None
    return getattr(sd_vae, "loaded_vae_file", None)


def _file_hash(path: str) -> str:
    """sha256 of a VAE file, computed once per (path, size, mtime): a 335 MB VAE takes about a second."""
    from ..checkpoint import file_sha256

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        _hashes[key] = file_sha256(path)
    return _hashes[key]


def vae_record(sd_model) -> dict:
    """The manifest's VAE entry: the VAE file's sha256, or the checkpoint's own for its built-in VAE."""
    path = _loaded_vae_file()
    if path:
        return {"hash": _file_hash(path), "name": os.path.basename(path), "file": True}
    checkpoint = service.checkpoint_record(sd_model.sd_checkpoint_info)
    return {"hash": checkpoint["hash"], "name": f"built-in VAE of {checkpoint['name']}", "file": False}


def wanted_precision(ep: str) -> str:
    """What the "fp16 VAE" setting (with --no-half-vae and the WebUI's NaN auto-revert) asks for, on ``ep``."""
    from .job import VaeScope

    return vae_precision(ep, VaeScope().target() == torch.float16)


# -- export ------------------------------------------------------------------------------------------

class VaeExport(service.PartExport):
    """The loaded VAE, in the precision the "fp16 VAE" setting asks for and, for an fp16 VAE with
    ``fp32_fallback``, in fp32 too, so the NaN guard decodes again on ONNX Runtime. Its raw export is
    made in a scratch folder and dropped (a VAE traces in seconds)."""

    trace_share = 0.1

    def __init__(self, sd_model, ep: str, precision: str | None = None, fp32_fallback: bool = True):
        super().__init__(sd_model, ep)
        self.record = vae_record(sd_model)
        self.precision = precision or wanted_precision(ep)
        self.fp32_fallback = fp32_fallback
        self.scratch = None

    def what(self):
        return f"the VAE {self.record['name']} for {providers.label(self.ep)}"

    def trace(self, reg, progress):
        service.log(f"exporting the VAE ({self.record['name']}) for {providers.label(self.ep)} in {self.precision}")
        self.scratch = reg.new_work_folder("export-vae")
        export_vae(self.sd_model.first_stage_model, self.scratch / "export",
                   progress=lambda f, m: progress(self.trace_share * f, m))

    def optimize(self, reg, tools, progress):
        precisions = [self.precision] + (["fp32"] if self.precision != "fp32" and self.fp32_fallback else [])
        artefact = None
        share = (1 - self.trace_share) / len(precisions)
        for i, prec in enumerate(precisions):
            made = optimize_export(self.scratch / "export", self.ep, reg, checkpoint=self.checkpoint, model=VAE,
                                   precision=prec, vae=self.record, toolchain=tools,
                                   progress=lambda f, m, i=i: progress(self.trace_share + share * (i + f), m))
            artefact = artefact or made
        return artefact

    def clean(self):
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def export_loaded_vae(ep: str, *, precision: str | None = None, fp32_fallback: bool = True, progress=None) -> dict:
    """Export and optimize the loaded VAE for ``ep`` (see ``VaeExport``); returns the artefact's manifest."""
    return service.export_loaded(lambda sd_model, ep: VaeExport(sd_model, ep, precision, fp32_fallback), ep, progress)


# -- the job -----------------------------------------------------------------------------------------

def _runner(artefact) -> OrtVae:
    openvino = settings.openvino_precision(shared.opts) if artefact.ep == "openvino" else "auto"
    key = (str(artefact.folder), artefact.manifest.get("created"), openvino)
    with _lock:
        if key not in _runners:
            if len(_runners) >= 4:
                _runners.pop(next(iter(_runners)))
            _runners[key] = OrtVae(artefact, openvino_precision=openvino)
        return _runners[key]


class VaeRoute:
    """``first_stage_model.decode``/``encode`` through ORT for one job, and what the job's infotext says."""

    def __init__(self, sd_model, fast: OrtVae, fp32: OrtVae | None, record: dict):
        self.sd_model = sd_model
        self.vae = sd_model.first_stage_model
        self.fast = fast
        self.record = record
        self.guard = GuardedDecoder(fast, vae_name=record["name"], torch_decode=self._torch_decode_fp32, fp32=fp32,
                                    notify=self._notify)
        self.saved: dict | None = None
        self.originals: dict = {}
        self.ort_calls = 0
        self.torch_calls = 0
        self.notes: list[str] = []
        # live previews decode from the progress API's thread while the job decodes or encodes: one at a time,
        # so the NaN guard's fp32 retry never changes the VAE's dtype under the other call
        self.lock = threading.RLock()

    # installing ------------------------------------------------------------------------------------

    def install(self) -> None:
        self.saved = {name: vars(self.vae).get(name, _MISSING) for name in ("decode", "encode")}
        self.originals = {name: getattr(self.vae, name) for name in ("decode", "encode")}
        self.vae.decode = self.decode
        self.vae.encode = self.encode

    def restore(self) -> None:
        if self.saved is None:
            return
        for name, value in self.saved.items():
            if value is _MISSING:
                vars(self.vae).pop(name, None)
            else:
                setattr(self.vae, name, value)
        self.saved = None

    # calls -----------------------------------------------------------------------------------------

    @staticmethod
    def serving() -> bool:
        """ORT Turbo is the SD Unet (or is selected and not applied yet, as during img2img's encode)."""
        from .unet import is_ours_active

        return sd_unet.current_unet is None or is_ours_active()

    def decode(self, z, *args, **kwargs):
        with self.lock:
            return self._decode(z, *args, **kwargs)

    def encode(self, x, *args, **kwargs):
        with self.lock:
            return self._encode(x, *args, **kwargs)

    def _decode(self, z, *args, **kwargs):
        if args or kwargs or not self.serving():
            return self._torch("decode", None, z, *args, **kwargs)
        try:
            out = self.guard.decode(z)
            self.ort_calls += 1
            return out
        except UnsupportedInput as exc:
            return self._torch("decode", exc.reason, z)
        except Exception as exc:  # an ONNX Runtime failure must not end the user's generation
            return self._torch("decode", f"ONNX Runtime failed ({type(exc).__name__}: {exc})", z)

    def _encode(self, x, *args, **kwargs):
        if args or not self.serving() or set(kwargs) - {"return_reg_log", "unregularized"}:
            return self._torch("encode", None, x, *args, **kwargs)
        try:
            moments = self.fast.encode_moments(x)
        except UnsupportedInput as exc:
            return self._torch("encode", exc.reason, x, **kwargs)
        except Exception as exc:
            return self._torch("encode", f"ONNX Runtime failed ({type(exc).__name__}: {exc})", x, **kwargs)
        self.ort_calls += 1
        return self._posterior(moments, **kwargs)

    def _posterior(self, moments, return_reg_log=False, unregularized=False):
        """What the PyTorch ``encode`` returns: ldm's Gaussian, or sgm's regularised sample (SDXL)."""
        regularization = getattr(self.vae, "regularization", None)
        if regularization is None:
            from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

            return DiagonalGaussianDistribution(moments)
        if unregularized:
            return moments, {}
        z, log = regularization(moments)
        return (z, log) if return_reg_log else z

    def _torch(self, name: str, reason: str | None, *args, **kwargs):
        if reason is not None:
            self._note(f"PyTorch VAE {name}: {reason}")
        self.torch_calls += 1
        return self.originals[name](*args, **kwargs)

    def _torch_decode_fp32(self, z):
        """The PyTorch VAE in fp32 for one decode (the NaN guard's last resort), then back to its dtype."""
        dtype = next(self.vae.parameters()).dtype
        try:
            if dtype != torch.float32:
                self.vae.to(torch.float32)
            with torch.no_grad():
                return self.originals["decode"](z.to(torch.float32))
        finally:
            if dtype != torch.float32:
                self.vae.to(dtype)

    def _notify(self, message: str, first_time: bool) -> None:
        if first_time:
            service.log(message)
        self._note(message, console=False)

    def _note(self, text: str, console: bool = True) -> None:
        if text not in self.notes:
            self.notes.append(text)
            if console:
                service.log(text)

    def infotext(self) -> str | None:
        """What ran, with no advice (that is in ``notes``): the artefact, or PyTorch."""
        if not self.ort_calls and not self.notes:
            return None
        if not self.ort_calls:
            return "PyTorch (fallback)"
        ran = f"{self.fast.id} ({self.fast.runs_on})"
        return f"{ran} and PyTorch" if self.torch_calls and self.notes else ran


def _find(sd_model) -> tuple[OrtVae | None, OrtVae | None, dict, str | None]:
    """(fast runner, fp32 runner or None, VAE record, why there is none)."""
    eps = service.providers_to_try()  # the chosen provider, then the CPU's artefact under Automatic/OpenVINO
    record = vae_record(sd_model)
    checkpoint = service.checkpoint_record(sd_model.sd_checkpoint_info)
    reg = service.registry()
    for ep in eps:
        precision = wanted_precision(ep)
        fp32 = find_vae_artefact(reg, checkpoint["hash"], record["hash"], ep, "fp32")
        fast = find_vae_artefact(reg, checkpoint["hash"], record["hash"], ep, precision) if precision != "fp32" else fp32
        if fast is None and fp32 is not None:
            fast = fp32  # the fp32 export serves an fp16 request: slower, never wrong
        if fast is not None:
            break
    if fast is None:
        return None, None, record, (f"no {providers.label(eps[0])} VAE artefact for {record['name']}; "
                                    "export the VAE in the ORT Turbo tab")
    fast_runner = _runner(fast)
    fp32_runner = _runner(fp32) if fp32 is not None and fp32.folder != fast.folder else None
    return fast_runner, fp32_runner, record, None


def before_job(p, selected: bool) -> None:
    """From the script's ``process`` hook (before img2img's encode and before the UNet is applied). The
    route belongs to the job (``job.Job``), which puts the WebUI's decode/encode back when it ends."""
    finish_job()  # a job that never finished
    state = current_job()
    sd_model = shared.sd_model
    if sd_model is None or getattr(sd_model, "first_stage_model", None) is None:
        return
    if not selected or not bool(getattr(shared.opts, settings.VAE_ON_ORT, True)):
        return
    try:
        fast, fp32, record, why = _find(sd_model)
    except OrtTurboError as exc:  # a broken artefact or no runtime is worth a line in the console
        fast, why = None, str(exc)
        state.vae_failed = True
    except Exception as exc:  # whatever else: the PyTorch VAE decodes, the reason is shown
        fast, why = None, f"ORT Turbo could not set up the VAE ({type(exc).__name__}: {exc})"
        state.vae_failed = True
    if fast is None:
        if state.vae_failed:
            service.log(f"PyTorch VAE used: {why}")
        state.vae_unavailable = why
        return
    state.vae_route = VaeRoute(sd_model, fast, fp32, record)
    state.vae_route.install()


_advised: set[str] = set()  # advice already printed in the console this session


def after_batch(p) -> None:
    """From ``postprocess_batch``: what decoded this batch for the infotext; why, under the image."""
    state = current_job()
    route = state.vae_route
    text = route.infotext() if route is not None else None
    notes = list(route.notes) if route is not None else []
    why, failed = state.vae_unavailable, state.vae_failed
    if route is None and why and is_selected():
        text = "PyTorch (fallback)" if failed else "PyTorch (no artefact)"
        notes = [f"PyTorch VAE used: {why}" if failed else why]
        if not failed and why not in _advised:  # a failure was logged when the job started
            _advised.add(why)
            service.log(f"PyTorch VAE used: {why}")
    if text:
        p.extra_generation_params[INFOTEXT_KEY] = text
    for note in notes:
        comment_under_image(p, f"ORT Turbo: {note}")


def finish_job() -> None:
    """The WebUI's own decode/encode again (the job's other changes stay until ``job.finish_job``)."""
    state = current_job()
    if state.vae_route is not None:
        state.vae_route.restore()
    state.vae_route, state.vae_unavailable, state.vae_failed = None, None, False


def unload() -> None:
    """The extension is unloaded or disabled: the WebUI's own decode/encode again, no sessions (``p.close``
    is the job's: ``job.unload`` puts it back)."""
    finish_job()
    forget_sessions()


def forget_sessions() -> None:
    """Drop cached ONNX Runtime VAE sessions (after artefacts change or to give memory back)."""
    with _lock:
        _runners.clear()

