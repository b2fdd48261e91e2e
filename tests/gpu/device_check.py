"""The GPU check (issue 16), in the order of ../shared/docs/gpu-preflight.md; not collected by pytest.

    python tests/gpu/device_check.py DATA_DIR OUT_DIR [--steps 1,2,...] [--dry-run]

DATA_DIR comes from ``make_device_data.py`` (``--ep cuda --size real`` on the GPU machine). Every step runs
in try/except, prints one JSON line and appends it to OUT_DIR/results.jsonl as it goes, so a command cut
short by its time limit still leaves what it measured; ``report.py`` turns results.jsonl into report.md.
``--dry-run`` (CI, ``make test``): the CPU provider stands in, tiny sizes, and the steps that need a GPU
say so instead of running.

Steps: 1 versions, stream handle, loaded cuDNN; 2 session creation (plan, Memcpy count, time, free VRAM);
3 race test (back-to-back calls read at once vs after synchronize, dedicated stream); 4 t vs t + 0.25;
5 first call vs steady state per shape; 6 graphs A, B, A and A from another thread; 7 timing (CUDA events)
ORT without/with graphs vs torch fp16; 8 whether TensorRT's library loads; 9 parity per family (SD1,
inpainting, SDXL-shaped) when the data has them. The full-size SD-Turbo
grid is ``fullsize.py`` (its own command: export and Olive take minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


class Check:
    def __init__(self, data: Path, out: Path, dry_run: bool):
        self.data, self.out, self.dry_run = data, out, dry_run
        self.ref = torch.load(data / "reference.pt", weights_only=False)
        from lib_ort.registry import Registry

        self.artefact = Registry(data / "registry").load(self.ref["artefact"])
        self.cuda = torch.cuda.is_available() and not dry_run
        self.device = torch.device("cuda") if self.cuda else torch.device("cpu")
        self.dtype = torch.float16 if self.artefact.manifest["precision"] == "fp16" else torch.float32
        self._unets: dict = {}

    def unet(self, graphs: bool = False):
        from lib_ort.unet import OrtUnet

        if graphs not in self._unets:
            self._unets[graphs] = OrtUnet(self.artefact, cuda_graph=graphs)
        return self._unets[graphs]

    def inputs(self, key: str, t: float = 999.0):
        case = self.ref["cases"][key]
        x = case["x"].to(self.device, self.dtype)
        return x, torch.full((x.shape[0],), t, device=self.device), case["context"].to(self.device, self.dtype)

    def rel(self, out, key: str, t: float = 999.0) -> float:
        ref = self.ref["cases"][key]["outputs"][t]
        return float((out.float().cpu() - ref).abs().max() / ref.abs().max())

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def needs_gpu(self):
        if not self.cuda:
            raise Skip("needs CUDA (dry run or no GPU)")


class Skip(Exception):
    pass


def step_versions(c: Check) -> dict:
    import onnxruntime as ort

    from lib_ort.cuda_libraries import loaded_libraries

    info = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                    current_stream_handle=torch.cuda.current_stream().cuda_stream,
                    torch_cudnn=torch.backends.cudnn.version())
    info["cudnn_in_process"] = loaded_libraries("cudnn")
    return info


def step_session(c: Check) -> dict:
    from lib_ort.sessions import placement_report

    free0 = torch.cuda.mem_get_info() if c.cuda else None
    start = time.perf_counter()
    unet = c.unet()
    info = {"create_s": round(time.perf_counter() - start, 2), "providers": unet.session.get_providers(),
            "plan": {"stream": unet.plan.stream.handle if unet.plan.stream else None,
                     "run_config": unet.plan.run_config, "options": unet.plan.providers[0][1]},
            "vram": unet.vram.to_dict() if unet.vram else None}
    if c.cuda:
        info["free_before_after_mb"] = [free0[0] // 2**20, torch.cuda.mem_get_info()[0] // 2**20]
    from lib_ort.cuda_libraries import loaded_libraries

    info["cudnn_in_process"] = loaded_libraries("cudnn")
    info["placement"] = placement_report(c.artefact.model_path, [p for p in unet.plan.providers])
    return info


def step_race(c: Check) -> dict:
    unet = c.unet()
    x, t, ctx = c.inputs("a")
    read_at_once = [c.rel(unet(x, t, ctx), "a") for _ in range(10)]  # .cpu() reads without an explicit sync
    outs = [unet(x, t, ctx) for _ in range(10)]
    c.sync()
    after_sync = [c.rel(o, "a") for o in outs]
    result = {"max_rel_read_at_once": max(read_at_once), "max_rel_after_sync": max(after_sync),
              "stream_handle": unet.plan.stream.handle if unet.plan.stream else None,
              "ok": max(read_at_once) < 3e-2 and max(after_sync) < 3e-2}
    if c.cuda:  # the plan before the pre-flight: ORT on its own stream, nothing synchronized (expected to race)
        from lib_ort.sessions import CudaRunner, StreamOrder, create_session, plan_session

        old = plan_session("cuda")  # no user_compute_stream: ORT's own stream, as with handle 0
        old.stream = StreamOrder(None, (("run",),))  # and no wait on either side
        old.run_config["disable_synchronize_execution_providers"] = "1"
        runner = CudaRunner(create_session(c.artefact.model_path, old), old, unet.output_name)
        feeds = unet.feeds(x, t, ctx)
        shape = (x.shape[0], unet.io["out_channels"], x.shape[2], x.shape[3])
        result["old_plan_max_rel_read_at_once"] = max(c.rel(runner.run(feeds, shape, unet.output_dtype), "a")
                                                      for _ in range(10))
    return result


def step_fractional_t(c: Check) -> dict:
    unet = c.unet()
    x, _, ctx = c.inputs("a")
    outs = {t: unet(x, torch.full((x.shape[0],), t, device=c.device), ctx).float().cpu() for t in (999.0, 999.25)}
    refs = c.ref["cases"]["a"]["outputs"]
    ort_step = float((outs[999.25] - outs[999.0]).abs().max())
    ref_step = float((refs[999.25] - refs[999.0]).abs().max())
    return {"ort_step": ort_step, "ref_step": ref_step, "ratio": ort_step / ref_step if ref_step else None,
            "rel_err": {str(t): c.rel(outs[t], "a", t) for t in outs}, "ok": ref_step > 0 and 0.5 < ort_step / ref_step < 2}


def time_ms(cuda: bool, fn, n: int = 10, warmup: int = 0) -> float:
    """Mean milliseconds per call of ``fn`` after ``warmup`` calls (cuDNN's search, graph capture): CUDA
    events on the GPU, the wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / n
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def step_first_vs_steady(c: Check) -> dict:
    unet = c.unet()
    result = {}
    for key in ("a", "b"):
        x, t, ctx = c.inputs(key)
        free0 = torch.cuda.mem_get_info()[0] if c.cuda else 0
        first = time_ms(c.cuda, lambda: unet(x, t, ctx), n=1)
        steady = time_ms(c.cuda, lambda: unet(x, t, ctx), n=5)
        result[key] = {"first_ms": round(first, 2), "steady_ms": round(steady, 2), "warmed_by_steps_3_4": key == "a",
                       "vram_growth_mb": (free0 - torch.cuda.mem_get_info()[0]) // 2**20 if c.cuda else None}
    return result


def step_graphs(c: Check) -> dict:
    c.needs_gpu()
    unet, plain = c.unet(graphs=True), c.unet()
    errs = {}
    for i, key in enumerate(("a", "b", "a")):
        x, t, ctx = c.inputs(key)
        for _ in range(3):  # ORT captures after its regular warm-up runs
            out = unet(x, t, ctx)
        c.sync()
        errs[f"{i}:{key}"] = float((out.float() - plain(x, t, ctx).float()).abs().max())
    box = {}

    def other():
        x, t, ctx = c.inputs("a")
        box["out"] = unet(x, t, ctx)
        torch.cuda.synchronize()

    th = threading.Thread(target=other)
    th.start()
    th.join()
    x, t, ctx = c.inputs("a")
    errs["other-thread:a"] = float((box["out"].float() - plain(x, t, ctx).float()).abs().max())
    return {"max_abs_vs_no_graph": errs, "policy": unet.graphs.reason, "ok": max(errs.values()) < 1e-2}


def step_timing(c: Check) -> dict:
    c.needs_gpu()
    sys.path.insert(0, str(Path(__file__).parent))
    from make_device_data import build_model

    model = build_model(c.ref["size"])
    model.load_state_dict(torch.load(c.data / "model_state.pt"))
    model = model.half().cuda()
    result = {}
    for key in ("a", "b"):
        x, t, ctx = c.inputs(key)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):  # the WebUI's fp16 path
            torch_fp16 = time_ms(c.cuda, lambda: model(x, t, ctx), warmup=2)
        result[key] = {"ort_ms": round(time_ms(c.cuda, lambda: c.unet()(x, t, ctx), warmup=2), 3),
                       "ort_graphs_ms": round(time_ms(c.cuda, lambda: c.unet(True)(x, t, ctx), warmup=3), 3),
                       "torch_fp16_ms": round(torch_fp16, 3)}
    return result


def step_tensorrt(c: Check) -> dict:
    c.needs_gpu()
    from lib_ort.sessions import require_tensorrt_libraries

    return {"libnvinfer": require_tensorrt_libraries()}  # an engine build needs the TensorRT artefact: not here


def step_families(c: Check) -> dict:
    """Parity per family (built with ``make_device_data.py --families``) at t = 999.25, fused op counts."""
    from lib_ort.registry import Registry
    from lib_ort.unet import OrtUnet

    families = c.ref.get("families") or {}
    if not families:
        raise Skip("no families in the data (make_device_data.py --families sd1,inpaint,sdxl)")
    result, ok = {}, True
    for family, f in families.items():
        unet = OrtUnet(Registry(c.data / "registry").load(f["artefact"]))
        i = {k: v.to(c.device, c.dtype if k != "timesteps" else torch.float32) for k, v in f["inputs"].items()}
        out = unet(i["x"], i["timesteps"], i["context"], y=i.get("y")).float().cpu()
        rel = float((out - f["output"]).abs().max() / f["output"].abs().max())
        fused = {k: v for k, v in f["fused_ops"].items() if k in ("MultiHeadAttention", "GroupNorm", "SkipGroupNorm",
                                                                  "NhwcConv", "BiasSplitGelu", "BiasAdd", "Attention")}
        result[family] = {"rel_err": rel, "fused_ops": fused}
        ok = ok and rel < (3e-2 if c.dtype == torch.float16 else 1e-3)
        del unet
    return {**result, "ok": ok}


STEPS = {1: step_versions, 2: step_session, 3: step_race, 4: step_fractional_t, 5: step_first_vs_steady,
         6: step_graphs, 7: step_timing, 8: step_tensorrt, 9: step_families}


def record(out: Path, line: dict) -> None:
    print(json.dumps(line, default=str), flush=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(line, default=str) + "\n")


def main(argv=None) -> int:
    args = argparse.ArgumentParser()
    args.add_argument("data")
    args.add_argument("out")
    args.add_argument("--steps", default=",".join(str(k) for k in STEPS))
    args.add_argument("--dry-run", action="store_true")
    a = args.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(Path(a.data), out, a.dry_run)
    failures = 0
    for number in (int(s) for s in a.steps.split(",")):
        fn = STEPS[number]
        start = time.perf_counter()
        try:
            line = {"step": number, "name": fn.__name__[5:], "status": "ok", **fn(check)}
            if line.get("ok") is False:
                line["status"] = "failed"
        except Skip as exc:
            line = {"step": number, "name": fn.__name__[5:], "status": "skipped", "why": str(exc)}
        except Exception as exc:  # one broken step must not hide the others' figures
            line = {"step": number, "name": fn.__name__[5:], "status": "error", "error": f"{type(exc).__name__}: {exc}",
                    "trace": traceback.format_exc(limit=4)}
        line["seconds"] = round(time.perf_counter() - start, 2)
        failures += line["status"] in ("failed", "error")
        record(out, line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
