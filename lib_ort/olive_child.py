"""The optimization child process: ``python -m lib_ort.olive_child JOB.json``.

Applies a recipe (Olive passes, as data) to an exported ONNX model and leaves, in the job's work folder,
``model/model.onnx`` + ``model/weights.pb`` and ``result.json`` (versions of the toolchain that made it,
fused op counts). A recipe whose one pass is ORT's transformers optimization (cpu, cuda, dml) runs that
pass with the weights left on disk (``lib_ort.transformers_pass``: the graph Olive makes, at a fraction of
the memory); any other recipe runs in Olive. It runs in the Olive toolchain's interpreter, which may
differ from the WebUI's: it imports only the standard library, Olive, ONNX, ONNX Runtime and
``lib_ort.graph``/``lib_ort.recipes``/``lib_ort.transformers_pass``/``lib_ort.fusion_shim`` (free of torch and of the WebUI).
Its memory goes back to the system when it exits.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path


def _versions() -> dict:
    from importlib import metadata

    found = {}
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "olive-ai", "onnx", "numpy"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def _numpy_version() -> str:
    import numpy

    return numpy.__version__


def main(job_path: str) -> int:
    """Run the job; a job with ``parts`` (the VAE's decoder and encoder) runs each part in turn, so
    Olive's start-up (most of a small model's time) is paid once."""
    os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    job = json.loads(Path(job_path).read_text())
    for part in job.get("parts") or [job]:
        code = _optimize(part)
        if code:
            return code
    return 0


def _optimize(job: dict) -> int:
    work = Path(job["work_dir"])
    from lib_ort import fusion_shim, transformers_pass
    from lib_ort.graph import consolidate_external_data, io_types, op_counts

    # before Olive or our pass reaches ORT's fusions: numpy >= 2.4 breaks the UNet attention fusion
    patched = fusion_shim.apply()
    if patched:
        print(f"[ORT Turbo] numpy {_numpy_version()}: scalar head count shim on {', '.join(patched)}", flush=True)

    start = time.perf_counter()
    export_dir = Path(job["olive_config"]["input_model"]["model_path"])
    info_path = export_dir / "export.json"
    info = json.loads(info_path.read_text())
    if not info.get("weights_consolidated", True):
        # exported in the WebUI's environment, which has no `onnx` package: gather the weights here
        print("[ORT Turbo] writing the exported weights into one file", flush=True)
        consolidate_external_data(export_dir / job["olive_config"]["input_model"]["onnx_file_name"], job["weights_file"])
        info["weights_consolidated"] = True
        staged = info_path.with_suffix(".part")
        staged.write_text(json.dumps(info, indent=2))
        os.replace(staged, info_path)
    final = work / "model"
    produced = Path(job["olive_config"]["output_dir"])
    passes = list(job["olive_config"]["passes"].values())
    export_model = export_dir / job["olive_config"]["input_model"]["onnx_file_name"]
    if len(passes) == 1 and transformers_pass.supports(passes[0]):
        # the recipe's one pass, run by ORT's optimizer on the graph alone (weights stay on disk)
        print(f"[ORT Turbo] optimizing for {job['ep']}: {passes[0]['type']} with the weights on disk", flush=True)
        transformers_pass.run(passes[0], export_model, final / "model.onnx", job["weights_file"])
    else:
        print(f"[ORT Turbo] optimizing with Olive for {job['ep']}", flush=True)
        from olive.workflows import run as olive_run

        olive_run(copy.deepcopy(job["olive_config"]))  # Olive pops keys from the dict it is given
        models = sorted(produced.rglob("*.onnx"))
        if len(models) != 1:
            print(f"[ORT Turbo] Olive produced {len(models)} models in {produced}, expected 1", file=sys.stderr)
            return 3
        onnx_path = models[0]
        final.mkdir()
        shutil.move(str(onnx_path), final / "model.onnx")
        weights = onnx_path.parent / job["weights_file"]
        if weights.exists():
            shutil.move(str(weights), final / job["weights_file"])
    fp32_nodes = []
    if job.get("fp32_time_embedding"):
        fp32_nodes = _fp32_time_embedding(final / "model.onnx", export_model)
    elapsed = time.perf_counter() - start
    result = {
        "optimize_s": round(elapsed, 2),
        "versions": _versions(),
        "fused_ops": op_counts(final / "model.onnx"),
        "io_types": io_types(final / "model.onnx"),
        "fp32_nodes": fp32_nodes,
        "placement": _placement(final / "model.onnx", job.get("placement_provider")),
    }
    (work / "result.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(produced, ignore_errors=True)
    print(f"[ORT Turbo] optimization done in {elapsed:.1f} s", flush=True)
    return 0


def _fp32_time_embedding(model_path: Path, export_path: Path) -> list[str]:
    import onnx

    from lib_ort.graph import fp32_time_embedding, load_graph

    model = load_graph(model_path)  # the weights stay where they are: only the graph changes
    names = fp32_time_embedding(model, load_graph(export_path))
    print(f"[ORT Turbo] time embedding rebuilt in fp32: {', '.join(names) or 'none found'}", flush=True)
    if names:
        staged = model_path.with_suffix(".part")
        onnx.save(model, str(staged))
        os.replace(staged, model_path)
    return names


def _placement(model_path: Path, provider: str | None) -> dict | None:
    """The Memcpy count ORT gives this graph on a GPU provider, when this toolchain's ORT has it; on the
    CPU provider nothing is copied (no measurement needed)."""
    if provider is None:
        return None
    if provider == "CPUExecutionProvider":
        return {"memcpy_nodes": 0, "provider": provider, "measured": False}
    try:
        from lib_ort.sessions import placement_report

        return placement_report(model_path, [(provider, {}), ("CPUExecutionProvider", {})])
    except Exception as exc:  # the artefact is still good; the runtime measures again when it matters
        print(f"[ORT Turbo] could not count Memcpy nodes: {exc}", flush=True)
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
