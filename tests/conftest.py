"""Shared fixtures: real tiny UNets (the WebUI's ldm class, diffusers for SDXL shapes), their
exports, and Olive artefacts made once per test session (each Olive run takes ~25 s)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib_ort.bench.architectures import build_unet  # noqa: E402
from lib_ort.describe import state_dict_digest  # noqa: E402
from lib_ort.pipeline import ensure_export, prepare  # noqa: E402
from lib_ort.registry import Registry  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

TINY = ("tiny-sd1", "tiny-sd2", "tiny-sd2-inpaint", "tiny-sdxl")

def pytest_configure(config):
    config.addinivalue_line("markers", "registry: needs the package registry (PyPI); fails without it, "
                                       "never skips (deselect with -m 'not registry')")


_models: dict[str, torch.nn.Module] = {}


def tiny_model(name: str) -> torch.nn.Module:
    if name not in _models:
        _models[name] = build_unet(name, seed=0)
    return _models[name]


def checkpoint_of(name: str) -> dict:
    return {"hash": state_dict_digest(tiny_model(name)), "name": name}


@pytest.fixture(scope="session")
def shared_registry(tmp_path_factory) -> Registry:
    """One registry for the whole run, so each (model, provider) is optimized once."""
    return Registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="session")
def export_of(shared_registry):
    def get(name: str) -> Path:
        folder, _ = ensure_export(tiny_model(name), shared_registry, checkpoint_of(name))
        return folder

    return get


@pytest.fixture(scope="session")
def artefact_of(shared_registry):
    def get(name: str, ep: str):
        return prepare(tiny_model(name), shared_registry, checkpoint_of(name), ep).artefact

    return get
