"""The ORT session gives its GPU memory back before the PyTorch UNet moves up, when both would not fit."""

import types

import torch

from lib_ort import vram
from lib_ort.webui import unet as webui_unet


class FakeOrt:
    released = False

    def release(self):
        self.released = True


def _unet_with_session(monkeypatch, free):
    monkeypatch.setattr(webui_unet.devices, "device", types.SimpleNamespace(type="cuda", index=0))
    monkeypatch.setattr(vram, "measure", lambda device_id=0: {"free": free, "total": 8 * vram.GiB, "torch_cache": 0})
    monkeypatch.setattr(webui_unet.service, "log", lambda message: None)
    u = webui_unet.OrtTurboUnet()
    u.ort, u.key = FakeOrt(), ("checkpoint", "hash", "cuda")
    return u


def test_session_is_released_when_the_torch_unet_would_not_fit_beside_it(monkeypatch):
    u = _unet_with_session(monkeypatch, free=256 * vram.MiB)
    session = u.ort
    u.release_session_if_vram_short(torch.nn.Linear(512, 512))  # 1 MiB of weights + the margin > 256 MiB
    assert session.released and u.ort is None
    # the same key: bind() answers the reason instead of rebuilding while the torch UNet is up
    assert u.key == ("checkpoint", "hash", "cuda") and "released to make room" in u.unavailable


def test_session_is_kept_when_there_is_room(monkeypatch):
    u = _unet_with_session(monkeypatch, free=4 * vram.GiB)
    session = u.ort
    u.release_session_if_vram_short(torch.nn.Linear(512, 512))
    assert u.ort is session and not session.released
