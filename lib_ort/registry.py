"""Artefacts on disk: one folder per (checkpoint hash, execution provider, precision).

A folder holds ``model.onnx``, ``weights.pb`` and ``manifest.json``. It is built under a hidden
temporary name beside its final place and renamed when complete, so a crash or a kill mid-way
leaves the registry readable and without the new entry (leftover temporary folders are ignored
and swept). Keys are checkpoint hashes, never names: names collide and folders move.

Loading validates: every file present at its recorded size, the manifest made for the checkpoint
asked for, a manifest format this code reads, and an ONNX Runtime new enough for the recipe's ops.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from . import providers
from .errors import ArtefactError

MANIFEST = "manifest.json"
#: the folder under the registry root that holds the raw fp32 exports the artefacts are made from
EXPORTS = "exports"
FORMAT_VERSION = 1
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 24 * 3600
#: hidden work folders: the registry's own, and the raw export's (lib_ort.export.staged_folder)
_WORK_PREFIXES = (_TMP_PREFIX, ".export-")


def artefact_id(checkpoint_hash: str, ep: str, precision: str, kind: str = "unet", vae_hash: str | None = None) -> str:
    """UNet artefacts: ``<checkpoint>-<ep>-<precision>``. VAE artefacts carry the VAE's own hash too
    (``<checkpoint>-vae-<vae>-<ep>-<precision>``): a VAE picked in the WebUI's VAE dropdown is another VAE."""
    if kind == "unet":
        return f"{checkpoint_hash[:12]}-{ep}-{precision}"
    if not vae_hash:
        raise ArtefactError(f"a {kind} artefact needs the VAE's hash in its manifest")
    return f"{checkpoint_hash[:12]}-{kind}-{vae_hash[:10]}-{ep}-{precision}"


def artefact_kind(manifest: dict) -> str:
    """``"unet"`` (manifests written before VAEs had artefacts have no kind) or ``"vae"``."""
    return manifest.get("kind", "unet")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def version_at_least(have: str, need: str) -> bool:
    """``have`` >= ``need`` for versions like "1.17.0" or "1.20.1+cu12" (major, minor, patch)."""
    return _version_tuple(have) >= _version_tuple(need)


def runtime_ort_version() -> str | None:
    """The importable ONNX Runtime's version; None when it is missing or its import fails (any exception:
    a broken install must not make listing artefacts fail; running one says why)."""
    try:
        import onnxruntime

        return onnxruntime.__version__
    except Exception:
        return None


@dataclasses.dataclass
class Artefact:
    folder: Path
    manifest: dict

    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def model_path(self) -> Path:
        return self.folder / self.manifest["model_file"]

    @property
    def ep(self) -> str:
        return self.manifest["ep"]

    @property
    def checkpoint_hash(self) -> str:
        return self.manifest["checkpoint"]["hash"]


@dataclasses.dataclass
class ListedArtefact:
    """One row of ``Registry.list()``: the artefact, or why it cannot be used."""

    id: str
    folder: Path
    manifest: dict | None
    problem: str | None

    @property
    def valid(self) -> bool:
        return self.problem is None


class Registry:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()  # the optimization child runs in another working directory

    # -- writing -----------------------------------------------------------------------------

    def new_work_folder(self, purpose: str) -> Path:
        """A hidden temporary folder inside the registry (same file system, so renames are atomic)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{purpose}-", dir=self.root))

    def commit(self, work: Path, manifest: dict) -> Artefact:
        """Write ``manifest`` into ``work`` (which holds the model files) and rename it into place.

        Replaces an existing artefact with the same id only after the new one is complete.
        """
        files = {}
        for name in (manifest["model_file"], *manifest.get("data_files", [])):
            path = work / name
            if not path.is_file():
                raise ArtefactError(f"cannot register {work}: {name} is missing")
            files[name] = path.stat().st_size
        manifest = dict(manifest, format=FORMAT_VERSION, files=files,
                        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        manifest["id"] = artefact_id(manifest["checkpoint"]["hash"], manifest["ep"], manifest["precision"],
                                     artefact_kind(manifest), (manifest.get("vae") or {}).get("hash"))
        tmp_manifest = work / (MANIFEST + ".part")
        tmp_manifest.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp_manifest, work / MANIFEST)
        final = self.root / manifest["id"]
        if final.exists():
            trash = self.root / f"{_TMP_PREFIX}old-{final.name}-{int(time.time())}"
            os.replace(final, trash)
            os.replace(work, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(work, final)
        return Artefact(final, manifest)

    # -- reading -----------------------------------------------------------------------------

    def _folders(self):
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list(self) -> list[ListedArtefact]:
        rows = []
        for folder in self._folders():
            if not (folder / MANIFEST).exists():
                continue  # the raw exports folder and anything that is not an artefact
            try:
                artefact = self._validate(folder)
                rows.append(ListedArtefact(folder.name, folder, artefact.manifest, None))
            except ArtefactError as exc:
                rows.append(ListedArtefact(folder.name, folder, _read_manifest_quietly(folder), str(exc)))
        return rows

    def find(self, checkpoint_hash: str, ep: str, precision: str | None = None, *, kind: str = "unet",
             vae_hash: str | None = None) -> Path | None:
        """The folder of the artefact for this checkpoint and provider, valid or not; None if none.

        ``kind="vae"`` finds a VAE artefact, which must also match ``vae_hash``. Without a ``precision``, a
        UNet in the provider's own recipe precision comes first (a CPU fp32 UNet before a test-made fp16 one)."""
        found = [row for row in self.list() if _matches(row.manifest or {}, checkpoint_hash, ep, precision, kind,
                                                         vae_hash)]
        if precision is None and kind == "unet" and ep in providers.KEYS:
            usual = providers.provider(ep).precision
            found.sort(key=lambda row: (row.manifest or {}).get("precision") != usual)
        return found[0].folder if found else None

    def load(self, artefact: str | os.PathLike, checkpoint_hash: str | None = None,
             vae_hash: str | None = None) -> Artefact:
        """Validate and return an artefact given its id or folder; raises ``ArtefactError``."""
        folder = Path(artefact)
        if not folder.is_absolute() and not folder.exists():
            folder = self.root / folder
        loaded = self._validate(folder, checkpoint_hash)
        made_for = (loaded.manifest.get("vae") or {}).get("hash")
        if vae_hash is not None and made_for != vae_hash:
            name = (loaded.manifest.get("vae") or {}).get("name") or "?"
            raise ArtefactError(f"{folder.name}: made for the VAE {name} ({(made_for or 'none')[:10]}), not for the "
                                f"loaded one ({vae_hash[:10]}). Export the VAE again.")
        return loaded

    def delete(self, artefact_id_or_folder: str) -> None:
        """Delete one artefact: a folder ``list`` shows (its manifest is there, valid or not), never the raw
        exports, a work folder, a cache or anything else in or outside the registry (the id comes from a URL)."""
        name = Path(artefact_id_or_folder).name
        folder = self.root / name
        try:
            found = bool(name) and not name.startswith(".") and name != EXPORTS and (folder / MANIFEST).is_file()
        except OSError:  # e.g. a name longer than the file system allows
            found = False
        if not found:
            shown = artefact_id_or_folder if len(artefact_id_or_folder) <= 80 else f"{artefact_id_or_folder[:80]}..."
            raise ArtefactError(f"no artefact {shown!r} in {self.root}")
        trash = self.root / f"{_TMP_PREFIX}deleted-{folder.name}-{int(time.time())}"
        os.replace(folder, trash)  # atomic: the entry is gone even if the removal below is cut short
        shutil.rmtree(trash, ignore_errors=True)

    def sweep(self, max_age_s: float = _STALE_TMP_S) -> int:
        """Remove temporary folders left by interrupted writes (a killed export), in the registry and one level
        below it (the raw exports' own staging folders); returns how many were removed."""
        if not self.root.is_dir():
            return 0
        removed = 0
        places = [self.root, *(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))]
        for place in places:
            for p in place.iterdir():
                if p.name.startswith(_WORK_PREFIXES) and p.is_dir() and time.time() - p.stat().st_mtime > max_age_s:
                    shutil.rmtree(p, ignore_errors=True)
                    removed += 1
        return removed

    def _validate(self, folder: Path, checkpoint_hash: str | None = None) -> Artefact:
        path = folder / MANIFEST
        if not path.is_file():
            raise ArtefactError(f"{folder.name}: no {MANIFEST}; the export was not finished. Export again.")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtefactError(f"{folder.name}: {MANIFEST} is unreadable ({exc}). Delete it and export again.")
        try:
            return self._check(folder, manifest, checkpoint_hash)
        except (KeyError, TypeError, AttributeError) as exc:  # a manifest edited or cut short by hand
            raise ArtefactError(f"{folder.name}: {MANIFEST} is incomplete ({type(exc).__name__}: {exc}). "
                                "Delete it and export again.") from exc

    def _check(self, folder: Path, manifest: dict, checkpoint_hash: str | None) -> Artefact:
        if manifest.get("format") != FORMAT_VERSION:
            raise ArtefactError(
                f"{folder.name}: made by another version of ORT Turbo (manifest format "
                f"{manifest.get('format')}, this version reads {FORMAT_VERSION}). Export again.")
        if checkpoint_hash is not None and manifest["checkpoint"]["hash"] != checkpoint_hash:
            raise ArtefactError(
                f"{folder.name}: made for checkpoint {manifest['checkpoint'].get('name') or '?'} "
                f"({manifest['checkpoint']['hash'][:10]}), not for the loaded one ({checkpoint_hash[:10]}).")
        for name, size in manifest["files"].items():
            f = folder / name
            if not f.is_file():
                raise ArtefactError(f"{folder.name}: {name} is missing. Export again.")
            actual = f.stat().st_size
            if actual != size:
                raise ArtefactError(
                    f"{folder.name}: {name} is {actual} bytes, the manifest says {size} "
                    "(truncated or replaced). Export again.")
        need = manifest.get("min_runtime_ort")
        have = runtime_ort_version()
        if need and have and not version_at_least(have, need):
            raise ArtefactError(
                f"{folder.name}: needs ONNX Runtime {need} or newer for its {providers.label(manifest['ep'])} ops; "
                f"this WebUI has {have}. Update onnxruntime or export again.")
        return Artefact(folder, manifest)


def _read_manifest_quietly(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _matches(m: dict, checkpoint_hash: str, ep: str, precision: str | None, kind: str, vae_hash: str | None) -> bool:
    return (m.get("checkpoint", {}).get("hash") == checkpoint_hash and m.get("ep") == ep
            and (precision is None or m.get("precision") == precision)
            and artefact_kind(m) == kind
            and (kind == "unet" or (m.get("vae") or {}).get("hash") == vae_hash))
