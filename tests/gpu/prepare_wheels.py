"""Prepare, on a CPU machine, what the GPU machine needs for ``tests/gpu/run.py`` (issue 24).

    python3 tests/gpu/prepare_wheels.py [--carried .gpu-wheels] [--base .gpu-base] [--no-base]

Why this exists: the GPU machine has Python 3.12, torch 2.11.0+cu130, numpy 2.5.2 and a CPU-only
onnxruntime 1.30.0, but no onnxruntime-gpu, Olive, pydantic, diffusers or ldm, and no network. Files reach
it only with a device call, at most 64 MiB per call *including the working tree*, and they survive only
while the machine is held (about 30 s idle). So everything it lacks is packed here into as few parts as
those limits allow:

``--carried`` (default ``.gpu-wheels/``, git-ignored) gets ``part-00`` .. ``part-NN`` and ``MANIFEST.json``.
The parts are one xz stream of a tar of the wheels, split so that each part plus the working tree stays
under 64 MiB. onnxruntime-gpu's wheel (247 MB, deflate) is first rewritten as a *stored* zip (same
members, no compression): xz then gets the libraries' redundancy deflate left (the CUDA provider library
goes from 223 MB deflated to 179 MB), which saves one whole device call (4 instead of 5). ``run.py`` checks
every part's and every wheel's sha256 against the manifest before it installs anything.

``--base`` (default ``.gpu-base/``, git-ignored) gets, for the CPU rehearsal only (never sent), the
packages the GPU machine already has, in its versions, built for CPython 3.12 — minus every distribution
the carried set brings (the machine lacks those: a wheel missing from the carried set must fail in the
rehearsal, not there). ``make gpu-rehearsal`` builds its venv with ``pip install --no-index --no-deps``
from that folder alone; ``run.py`` then adds the carried set exactly as on the GPU machine.

Versions: pip's resolver run on the machine's set plus Olive 0.13.0, diffusers 0.42.1 and onnxruntime-gpu
(2026-12-07), minus what the machine has. Not huggingface-hub 2.x (../shared/device/prepare-wheels.sh
carried 2.4.0): transformers 5.17 refuses it at import, and diffusers 0.42.1 takes the machine's 1.33.0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: what the GPU machine lacks (brought by the device calls)
CARRIED = ["onnxruntime-gpu==1.30.0",
           "olive-ai==0.13.0", "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0",
           "typing-inspection==0.4.5", "optuna==5.0.0", "alembic==1.20.1", "sqlalchemy==2.1.9", "mako==1.4.3",
           "colorlog==6.12.0", "opentelemetry-api==1.45.2", "opentelemetry-sdk==1.45.2",
           "opentelemetry-semantic-conventions==0.66b2", "questionary==2.1.1", "prompt-toolkit==3.0.53",
           "wcwidth==0.9.4", "tzdata==2026.6",
           "stable-diffusion-sdkit==2.1.5", "omegaconf==2.4.0",
           "diffusers==0.42.1", "lazy-importer==0.1.0", "importlib-metadata==10.2.0"]

#: what the GPU machine has (the issue, ../shared/device/README.md, KINDS.md's package list), for the
#: rehearsal's venv: these with their dependencies
MACHINE = ["torch==2.11.0", "numpy==2.5.2", "onnx==1.23.1", "onnx-ir==1.0.0", "onnxruntime==1.30.0",
           "onnxscript==0.7.2", "transformers==5.17.0", "safetensors==0.8.0", "huggingface-hub==1.33.0",
           "einops", "psutil", "matplotlib", "pillow", "pytest", "protobuf", "pyyaml",
           # Olive imports these; the machine has them (/work/.library/device/KINDS.md's package list)
           "torchmetrics==1.9.0", "lightning-utilities", "pandas", "requests", "urllib3", "charset-normalizer",
           "zipp", "python-dateutil"]

#: CPython 3.12 on glibc 2.28+ x86_64, every manylinux tag that covers (torch's nvidia-nccl is 2_18)
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"] + [
    arg for tag in ("manylinux_2_28", "manylinux_2_27", "manylinux_2_25", "manylinux_2_24", "manylinux_2_18",
                    "manylinux_2_17", "manylinux2014", "manylinux_2_12", "manylinux2010", "manylinux_2_5",
                    "manylinux1") for arg in ("--platform", f"{tag}_x86_64")] + ["--platform", "any"]

MiB = 2**20
CALL_LIMIT = 64 * MiB  # one device call: the working tree plus the carried paths
MARGIN = 1 * MiB


def canonical(name: str) -> str:
    """A distribution's name as wheel files spell it (``onnxruntime_gpu``), lower case."""
    return name.split("==")[0].strip().lower().replace("-", "_").replace(".", "_")


def wheel_name(filename: str) -> str:
    return canonical(filename.split("-")[0])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def download(requirements: list[str], dest: Path, deps: bool) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "-d", str(dest), *PLATFORM, *requirements]
    if not deps:
        cmd.insert(4, "--no-deps")
    subprocess.run(cmd, check=True)


def stored_copy(wheel: Path, out: Path) -> None:
    """The same wheel with every member stored: pip installs it alike, xz compresses it better. Member
    order, names and timestamps are kept, so the result (and its sha256) is the same on every run."""
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.external_attr, copy.create_system = info.external_attr, info.create_system
            with src.open(info) as data:
                dst.writestr(copy, data.read(), zipfile.ZIP_STORED)


def tree_bytes() -> int:
    """What every device call carries besides the parts: the working tree git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    return sum((ROOT / n).stat().st_size for n in names if n and (ROOT / n).is_file())


def xz(src: Path, dst: Path) -> None:
    """xz preset 1: on the CUDA kernels (mostly incompressible) higher presets gain under 1 % and take
    several times longer. The xz tool with all cores when present, else Python's lzma (same format)."""
    if shutil.which("xz"):
        with open(dst, "wb") as out:
            subprocess.run(["xz", "-1", "-T0", "-c", str(src)], stdout=out, check=True)
        return
    import lzma

    with open(src, "rb") as f, lzma.open(dst, "wb", preset=1) as out:
        shutil.copyfileobj(f, out, 4 * MiB)


def pack(wheels: list[Path], carried: Path, work: Path) -> dict:
    tar_path, xz_path = work / "bundle.tar", work / "bundle.tar.xz"
    shas = {}
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        for wheel in sorted(wheels):
            if wheel_name(wheel.name) == "onnxruntime_gpu":
                stored = work / wheel.name
                stored_copy(wheel, stored)
                wheel = stored
            shas[wheel.name] = sha256(wheel)
            info = tar.gettarinfo(str(wheel), arcname=wheel.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(wheel, "rb") as f:
                tar.addfile(info, f)
    xz(tar_path, xz_path)
    tree = tree_bytes()
    total = xz_path.stat().st_size
    largest = CALL_LIMIT - tree - MARGIN
    calls = -(-total // largest)
    part_size = -(-total // calls)  # as few calls as fit, the parts even: each call keeps the same headroom
    for old in carried.glob("part-*"):
        old.unlink()
    parts = {}
    with open(xz_path, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(part_size), b"")):
            name = f"part-{i:02d}"
            (carried / name).write_bytes(block)
            parts[name] = hashlib.sha256(block).hexdigest()
    manifest = {"parts": parts, "bundle_sha256": sha256(xz_path), "bundle_bytes": total,
                "tar_bytes": tar_path.stat().st_size, "wheels": shas, "part_bytes": part_size,
                "tree_bytes": tree, "call_limit_bytes": CALL_LIMIT,
                "calls": len(parts), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (carried / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def prepare_base(base: Path) -> list[str]:
    """The machine's packages with their dependencies, minus what the carried set brings."""
    download(MACHINE, base, deps=True)
    carried_names = {canonical(r) for r in CARRIED}
    keep = {canonical(r): r for r in MACHINE}
    dropped = []
    for wheel in base.glob("*.whl"):
        name = wheel_name(wheel.name)
        if name in carried_names and name not in keep:
            wheel.unlink()
            dropped.append(wheel.name)
    return sorted(dropped)


def main(argv=None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--carried", default=str(ROOT / ".gpu-wheels"))
    args.add_argument("--base", default=str(ROOT / ".gpu-base"))
    args.add_argument("--no-base", action="store_true", help="only the carried parts (what the GPU machine gets)")
    a = args.parse_args(argv)
    carried, start = Path(a.carried), time.perf_counter()
    dl = carried / "dl"
    download(CARRIED, dl, deps=False)
    wheels = sorted(dl.glob("*.whl"))
    missing = {canonical(r) for r in CARRIED} - {wheel_name(w.name) for w in wheels}
    if missing:
        raise SystemExit(f"not downloaded: {sorted(missing)}")
    work = carried / "pack"
    work.mkdir(parents=True, exist_ok=True)
    manifest = pack(wheels, carried, work)
    shutil.rmtree(work)
    report = {"carried": {k: manifest[k] for k in ("calls", "bundle_bytes", "tar_bytes", "part_bytes", "tree_bytes")},
              "wheels": len(manifest["wheels"])}
    if not a.no_base:
        report["base_dropped"] = prepare_base(Path(a.base))
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
