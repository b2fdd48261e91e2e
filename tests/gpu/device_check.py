"""GPU check for a lent CUDA machine (not collected by pytest; run by hand).

    python tests/gpu/device_check.py DEVICE_DATA_DIR

DEVICE_DATA_DIR is made here by ``python tests/gpu/make_device_data.py DIR``: tiny CUDA and CPU
artefacts plus inputs and the torch reference output. The GPU machine has torch and an
onnxruntime but none of the export toolchain, so it only loads and runs what was built here.
It prints what it found as JSON lines and exits non-zero on a failed check.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(data_dir: str) -> int:
    import onnxruntime as ort
    import torch

    data = Path(data_dir)
    info = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(info), flush=True)
    if "CUDAExecutionProvider" not in info["providers"] or not info["cuda"]:
        print(json.dumps({"skipped": "no CUDAExecutionProvider in this onnxruntime"}))
        return 0
    from lib_ort.registry import Registry
    from lib_ort.unet import OrtUnet

    ref = torch.load(data / "reference.pt")
    registry = Registry(data / "registry")
    failures = 0
    for static in (False, True):
        unet = OrtUnet(registry.load(ref["cuda_artefact"]), cuda_graph=static)
        for key, case in ref["cases"].items():
            inputs = {k: v.cuda().half() for k, v in case["inputs"].items()}
            out = unet(inputs["x"], inputs["timesteps"], inputs["context"], y=inputs.get("y"))
            out = unet(inputs["x"], inputs["timesteps"], inputs["context"], y=inputs.get("y"))  # graph replay
            expected = case["output"].cuda()
            rel = float((out.float() - expected).abs().max() / expected.abs().max())
            ok = out.dtype == torch.float16 and out.is_cuda and rel < 2e-2
            failures += not ok
            print(json.dumps({"static": static, "case": key, "rel_err": rel, "ok": ok}), flush=True)
        x = {k: v.cuda().half() for k, v in ref["cases"]["b1"]["inputs"].items()}
        for _ in range(3):
            unet(x["x"], x["timesteps"], x["context"])
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            unet(x["x"], x["timesteps"], x["context"])
        torch.cuda.synchronize()
        print(json.dumps({"static": static, "tiny_call_ms": (time.perf_counter() - t) / 20 * 1000}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
