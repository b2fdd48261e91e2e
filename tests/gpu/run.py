"""The GPU check's one entry point (issue 24): what a device call runs, no ``make`` needed.

    python3 tests/gpu/run.py OUTDIR [--wheels .gpu-wheels] [--steps call1|call2|all|a,b,...] [--budget SECONDS]

Why one script: the GPU machine is lent for about 15 minutes in all, has no network and no ``make``, and
only OUTDIR (``$OUT``: at most 8 files, 2 folders deep) comes back. So this script

1. installs the carried wheels (``--wheels``: the parts and MANIFEST.json of ``prepare_wheels.py``): every
   part's sha256, the xz stream, every wheel's sha256, then ``pip install --no-index --no-deps --target``
   into ``--site`` (default ``<wheels>/site``, reused while the machine is held: a second call skips it);
2. runs every step in its own child process (``PYTHONPATH`` = that site + this checkout) with its own time
   box, inside ``--budget`` for the whole call: a step that hangs or crashes is reported ``failed`` and the
   next one runs; a step whose box no longer fits is ``skipped: budget``;
3. appends one JSON line per finished step to OUTDIR/results.jsonl (a call cut short keeps what it got),
   then writes OUTDIR/report.md, OUTDIR/chart.png (images/s of the grids) and OUTDIR/summary.json;
4. prints, as its last stdout line, ``{"versions": {...}, "steps": {name: "ok" | "skipped: …" |
   "failed: …"}}`` and exits 1 when a step failed.

Without a GPU (``make gpu-rehearsal``) the CPU provider stands in: tiny models and the cpu recipe; the
CUDA-only steps say ``skipped: no GPU``; the full-size steps run their tiny stand-ins (the line says so).
Whether there is a GPU is asked in each child (``torch.cuda.is_available()``), never at import.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: name -> (time box in seconds on the GPU, on the CPU stand-in, steps it needs ok first), in run order:
#: the tiny checks first (cheap, the pre-flight's points), then the headline SD-Turbo grid, then the rest
STEPS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "providers": (60, 60, ()),
    "data": (150, 240, ("providers",)),          # small real-width UNets per family + artefacts (CUDA recipe)
    "iobinding": (60, 60, ("data",)),            # session, 0 Memcpy nodes, race test on the dedicated stream
    "fractional_t": (45, 60, ("data",)),         # fp32 timestep: t vs t + 0.25, first call vs steady state
    "graphs": (60, 30, ("data",)),               # CUDA graphs at two shapes, and from another thread
    "timing": (60, 30, ("data",)),               # ORT with/without graphs vs torch fp16 (small UNet)
    "tensorrt": (30, 30, ("providers",)),        # whether libnvinfer loads
    "parity": (60, 90, ("data",)),               # per family (sd1, inpaint, sdxl) through the recipe
    "sdturbo_prepare": (180, 240, ("providers",)),  # full-size SD-Turbo export + CUDA recipe
    "sdturbo_grid": (90, 120, ("sdturbo_prepare",)),  # (1,1) (1,4) (4,1) (4,4): torch eager fp16 vs ORT
    "vae_nan": (120, 240, ("providers",)),       # fp16 VAE vs PyTorch, NaN guard on an overflowing VAE
    "sdturbo_compile": (150, 30, ("sdturbo_prepare",)),  # the same grid with torch.compile added
    "sdxl_turbo": (170, 300, ("providers",)),    # SDXL-Turbo export + recipe + (1,4)
}
#: the device calls of docs/gpu-check.md: the first (<= 6 min) gets the tiny checks and the headline grid,
#: the second (<= 3 min, only while the machine is still held: it reuses the install and the artefact)
#: the rest; ``all`` is the rehearsal's
PRESETS = {"call1": ("providers", "data", "iobinding", "fractional_t", "graphs", "tensorrt", "parity",
                     "sdturbo_prepare", "sdturbo_grid", "timing"),
           "call2": ("sdturbo_compile", "vae_nan", "sdxl_turbo"),
           "all": tuple(STEPS)}
REPORT_RESERVE_S = 15  # the report, the chart and the last line after the last step
GPU_ONLY = {"graphs", "timing", "tensorrt", "sdturbo_compile"}
FILES = ("results.jsonl", "report.md", "chart.png", "summary.json")


# ----------------------------------------------------------------------------------------- install


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Parts:
    """The parts read back to back as one stream, each checked against the manifest as it is read."""

    def __init__(self, folder: Path, parts: dict):
        self.folder, self.names, self.expected = folder, sorted(parts), parts

    def __iter__(self):
        for name in self.names:
            path = self.folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: was every part sent (docs/gpu-check.md)?")
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != self.expected[name]:
                raise ValueError(f"{name}: sha256 differs from MANIFEST.json (a damaged or stale part)")
            yield data


def install(wheels: Path, site: Path) -> dict:
    """Reassemble, check and install the carried wheels into ``site``; skipped when ``site`` already holds
    this manifest's bundle (the second call on a machine still held)."""
    manifest = json.loads((wheels / "MANIFEST.json").read_text())
    stamp = site / ".bundle-sha256"
    if stamp.is_file() and stamp.read_text().strip() == manifest["bundle_sha256"]:
        return {"site": str(site), "reused": True}
    start = time.perf_counter()
    unpacked = wheels / "unpacked"
    unpacked.mkdir(parents=True, exist_ok=True)
    tar_path, whole = unpacked / "bundle.tar", hashlib.sha256()
    decompressor = lzma.LZMADecompressor()
    with open(tar_path, "wb") as tar_out:
        for data in _Parts(wheels, manifest["parts"]):
            whole.update(data)
            tar_out.write(decompressor.decompress(data))
        if not decompressor.eof:
            raise ValueError("the xz stream ends early: a part is missing")
    if whole.hexdigest() != manifest["bundle_sha256"]:
        raise ValueError("the reassembled bundle's sha256 differs from MANIFEST.json")
    with tarfile.open(tar_path) as tar:
        tar.extractall(unpacked, filter="data")
    tar_path.unlink()
    files = []
    for name, digest in sorted(manifest["wheels"].items()):
        path = unpacked / name
        if _sha256_file(path) != digest:
            raise ValueError(f"{name}: sha256 differs from MANIFEST.json")
        files.append(str(path))
    unpack_s = time.perf_counter() - start
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--target", str(site), *files], check=True)
    stamp.write_text(manifest["bundle_sha256"] + "\n")
    for f in files:
        os.unlink(f)
    return {"site": str(site), "reused": False, "wheels": len(files), "unpack_s": round(unpack_s, 1),
            "install_s": round(time.perf_counter() - start - unpack_s, 1)}


# ----------------------------------------------------------------------------------------- steps
# Each runs in a child (``run.py --child NAME``) and returns its figures; ``Skip`` says why it did not run.


class Skip(Exception):
    pass


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _need_gpu():
    if not _gpu():
        raise Skip("no GPU")


def _check(work: Path):
    import device_check

    return device_check.Check(work / "data", work, dry_run=not _gpu())


def _fullsize_args(**kw):
    return argparse.Namespace(dry_run=not _gpu(), no_compile=kw.pop("no_compile", True), **kw)


def step_providers(work: Path, site: Path | None) -> dict:
    import numpy
    import onnxruntime as ort
    import torch

    info = {"python": sys.version.split()[0], "numpy": numpy.__version__, "torch": torch.__version__,
            "onnxruntime": ort.__version__, "onnxruntime_from": str(Path(ort.__file__).parent),
            "providers": ort.get_available_providers(), "cuda": torch.cuda.is_available()}
    if site is not None and not info["onnxruntime_from"].startswith(str(site)):
        raise AssertionError(f"onnxruntime comes from {info['onnxruntime_from']}, not the carried wheels in {site}")
    import olive  # noqa: F401  the optimizer child needs it: a missing carried wheel shows here
    import diffusers  # noqa: F401
    import ldm  # noqa: F401

    info["olive"] = getattr(olive, "__version__", "?")
    if info["cuda"]:
        info.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)))
        info["ok"] = "CUDAExecutionProvider" in info["providers"]
    else:
        info["ok"] = "CPUExecutionProvider" in info["providers"]
    return info


def step_data(work: Path, site) -> dict:
    import make_device_data

    gpu = _gpu()
    return make_device_data.main([str(work / "data"), "--ep", "cuda" if gpu else "cpu",
                                  "--size", "real" if gpu else "tiny", "--families", "sd1,inpaint,sdxl"])


def step_iobinding(work: Path, site) -> dict:
    import device_check

    c = _check(work)
    session, race = device_check.step_session(c), device_check.step_race(c)
    memcpy = (session.get("placement") or {}).get("memcpy_nodes")
    return {"session": session, "race": race, "memcpy_nodes": memcpy, "ok": memcpy == 0 and race["ok"]}


def step_fractional_t(work: Path, site) -> dict:
    import device_check

    c = _check(work)
    result = device_check.step_fractional_t(c)
    result["first_vs_steady"] = device_check.step_first_vs_steady(c)
    return result


def step_graphs(work: Path, site) -> dict:
    import device_check

    _need_gpu()
    return device_check.step_graphs(_check(work))


def step_timing(work: Path, site) -> dict:
    import device_check

    _need_gpu()
    return device_check.step_timing(_check(work))


def step_tensorrt(work: Path, site) -> dict:
    import device_check

    _need_gpu()
    try:
        return device_check.step_tensorrt(None)
    except Exception as exc:  # "if it loads": not loading is an answer, not a failure
        raise Skip(f"TensorRT does not load: {type(exc).__name__}: {str(exc)[:200]}") from None


def step_parity(work: Path, site) -> dict:
    import device_check

    c = _check(work)
    result = device_check.step_families(c)
    result["sd2"] = {"rel_err": c.rel(c.unet()(*c.inputs("a", 999.25)), "a", 999.25)}
    import torch

    limit = 3e-2 if c.dtype == torch.float16 else 1e-3
    result["ok"] = result["ok"] and result["sd2"]["rel_err"] < limit
    return result


def _stand_in(result: dict) -> dict:
    if not _gpu():
        result["stand_in"] = "no GPU: the tiny model on the CPU provider stands in for the full-size one"
    return result


def step_sdturbo_prepare(work: Path, site) -> dict:
    import fullsize

    a = _fullsize_args()
    return _stand_in(fullsize.cmd_prepare(a, fullsize._setup(a), work))


def step_sdturbo_grid(work: Path, site) -> dict:
    import fullsize

    a = _fullsize_args()
    return _stand_in(fullsize.cmd_grid(a, fullsize._setup(a), work))


def step_vae_nan(work: Path, site) -> dict:
    import fullsize

    a = _fullsize_args()
    return _stand_in(fullsize.cmd_vae(a, fullsize._setup(a), work))


def step_sdturbo_compile(work: Path, site) -> dict:
    import fullsize

    _need_gpu()  # inductor on a 2-core CPU would take minutes for a figure nobody reads
    a = _fullsize_args(no_compile=False)
    return fullsize.cmd_grid(a, fullsize._setup(a), work)


def step_sdxl_turbo(work: Path, site) -> dict:
    import fullsize

    a = _fullsize_args(arch="sdxl-turbo" if _gpu() else "tiny-sdxl", batches=(1,))
    s = fullsize._setup(a)
    prepared = fullsize.cmd_prepare(a, s, work)
    grid = fullsize.cmd_grid(a, s, work)
    grid["rows"] = [r for r in grid["rows"] if r["steps"] == 4]  # the (1, 4) cell
    return _stand_in({"prepare": prepared, **grid})


def child(name: str, out: Path, work: Path, site: Path | None) -> int:
    sys.path[:0] = [str(HERE), str(ROOT)]
    from lib_ort import fusion_shim  # noqa: F401  (imported by the optimizer child; here only to fail early)

    start = time.perf_counter()
    try:
        line = {"step": name, "name": name, "status": "ok", **globals()[f"step_{name}"](work, site)}
        if line.get("ok") is False:
            line["status"], line["why"] = "failed", "a figure is outside its bound (see the step's figures)"
    except Skip as exc:
        line = {"step": name, "name": name, "status": "skipped", "why": str(exc)}
    except Exception as exc:
        import traceback

        line = {"step": name, "name": name, "status": "failed", "why": f"{type(exc).__name__}: {str(exc)[:300]}",
                "trace": traceback.format_exc(limit=6)}
    line["seconds"] = round(time.perf_counter() - start, 2)
    _append(out, line)
    return 0


# ----------------------------------------------------------------------------------------- parent


def _append(out: Path, line: dict) -> None:
    text = json.dumps(line, default=str)
    print(text[:2000], flush=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(text + "\n")


def _lines(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def chart(out: Path, lines: list[dict]) -> Path | None:
    """Images/s per configuration and (batch, steps) for every grid step that ran."""
    grids = [(r["name"], r["rows"]) for r in lines if r.get("rows") and r.get("status") == "ok"]
    if not grids:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grids), figsize=(6 * len(grids), 4), squeeze=False)
    for ax, (name, rows) in zip(axes[0], grids):
        cells = sorted({(r["batch"], r["steps"]) for r in rows})
        configs = list(dict.fromkeys(r["config"] for r in rows))
        width = 0.8 / len(configs)
        for i, config in enumerate(configs):
            values = {(r["batch"], r["steps"]): r["images_per_s"] for r in rows if r["config"] == config}
            ax.bar([j + i * width for j in range(len(cells))], [values.get(c, 0) for c in cells], width, label=config)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cells))], [f"b{b} s{s}" for b, s in cells])
        ax.set_ylabel("images/s")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "chart.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def summary(lines: list[dict], versions: dict) -> dict:
    steps = {}
    for r in lines:
        if r["name"] in STEPS or r["name"] == "install":
            status = r["status"]
            steps[r["name"]] = status if status == "ok" else f"{status}: {r.get('why', '')}"
    return {"versions": versions, "steps": steps}


def _versions(env: dict) -> dict:
    code = ("import json, numpy, onnxruntime, torch; print(json.dumps({'numpy': numpy.__version__, "
            "'onnxruntime': onnxruntime.__version__, 'torch': torch.__version__}))")
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv=None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("out")
    args.add_argument("--wheels", help="the carried parts + MANIFEST.json (prepare_wheels.py); none: use this env")
    args.add_argument("--site", help="where the carried wheels go (default: WHEELS/site)")
    args.add_argument("--work", default=str(ROOT / ".gpu-work"), help="data and registries (never sent back)")
    args.add_argument("--steps", default="all", help=f"step names or presets ({', '.join(PRESETS)})")
    args.add_argument("--budget", type=float, default=340.0, help="seconds for the whole call")
    args.add_argument("--child", help=argparse.SUPPRESS)
    a = args.parse_args(argv)
    out, work = Path(a.out).resolve(), Path(a.work).resolve()
    site = Path(a.site).resolve() if a.site else (Path(a.wheels).resolve() / "site" if a.wheels else None)
    if a.child:
        return child(a.child, out, work, site)
    began = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    for name in FILES:  # this call's files only: OUTDIR comes back whole
        (out / name).unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OLIVE_DISABLE_TELEMETRY="1")
    if a.wheels:
        start = time.perf_counter()
        try:
            line = {"step": "install", "name": "install", "status": "ok", **install(Path(a.wheels), site)}
        except Exception as exc:
            line = {"step": "install", "name": "install", "status": "failed", "why": f"{type(exc).__name__}: {exc}"}
        line["seconds"] = round(time.perf_counter() - start, 1)
        _append(out, line)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), str(ROOT), env.get("PYTHONPATH")) if p)
    wanted = [n for part in a.steps.split(",") if part.strip() for n in PRESETS.get(part.strip(), (part.strip(),))]
    unknown = set(wanted) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    gpu_probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                               env=env, capture_output=True, text=True, timeout=120)
    gpu = gpu_probe.stdout.strip().endswith("True")
    status: dict[str, str] = {}
    for name in wanted:
        box = STEPS[name][0 if gpu else 1]
        left = a.budget - (time.perf_counter() - began) - REPORT_RESERVE_S
        blocked = [d for d in STEPS[name][2] if d in status and status[d] != "ok"]
        line = None
        if blocked:
            line = {"step": name, "name": name, "status": "skipped", "why": f"needs {', '.join(blocked)}"}
        elif not gpu and name in GPU_ONLY:
            line = {"step": name, "name": name, "status": "skipped", "why": "no GPU"}
        elif left < box * 0.5:
            line = {"step": name, "name": name, "status": "skipped", "why": f"budget ({left:.0f} s left, box {box} s)"}
        if line is None:
            before = len(_lines(out))
            start = time.perf_counter()
            timeout = max(1.0, min(box, left))
            cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--child", name, "--work", str(work)]
            if site is not None:
                cmd += ["--site", str(site)]
            try:
                done = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
                tail = (done.stdout + done.stderr)[-1500:]
                code = done.returncode
            except subprocess.TimeoutExpired:
                tail, code = "", f"timed out after {timeout:.0f} s"
            written = _lines(out)[before:]
            if written:
                line = None
                status[name] = written[-1]["status"]
            else:
                why = code if isinstance(code, str) else f"the child ended with {code} and no result"
                line = {"step": name, "name": name, "status": "failed", "why": why,
                        "seconds": round(time.perf_counter() - start, 1), "trace": tail}
        if line is not None:
            _append(out, line)
            status[name] = line["status"]
    lines = _lines(out)
    versions = _versions(env)
    import report

    try:
        chart(out, lines)
    except Exception as exc:  # the figures are in report.md already
        print(f"chart: {type(exc).__name__}: {exc}", file=sys.stderr)
    result = summary(lines, versions)
    report.write_report(out, title_extra=f"total {time.perf_counter() - began:.0f} s", summary=result)
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)
    return 1 if any(v.startswith("failed") for v in result["steps"].values()) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
