"""Run ONNX models through ORT Turbo's OpenVINO session plan, in a Python that has onnxruntime-openvino.

Used by tests/test_openvino_run.py: the engine's own environment cannot hold onnxruntime-openvino beside its
onnxruntime, and needs no torch here (``plan_session`` is given the thread count). Reads a job (JSON: runs of
model, inputs .npz, precision, output .npy, and optionally initializers .npz: weights given to the session in
the file's place, the way a LoRA reaches the ONNX UNet), writes each output and prints one JSON line: what each session
ran on, and whether this CPU has native bf16.

    python tests/tools/openvino_run.py JOB.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lib_ort.cpu_features import has_native_bf16, this_cpu_flags  # noqa: E402
from lib_ort.errors import OrtTurboError  # noqa: E402
from lib_ort.sessions import create_session, plan_session  # noqa: E402


def main(job_file: str) -> dict:
    import onnxruntime

    job = json.loads(Path(job_file).read_text())
    report = {"onnxruntime": onnxruntime.__version__, "native_bf16": has_native_bf16(this_cpu_flags()),
              "torch_imported": False, "runs": [], "refused": None}
    for run in job["runs"]:
        plan = plan_session("openvino", intra_op_threads=1, openvino_precision=run["precision"])
        initializers = None
        if run.get("initializers"):
            with np.load(run["initializers"]) as data:
                initializers = {name: np.ascontiguousarray(data[name]) for name in data.files}
        session = create_session(run["model"], plan, initializers)
        with np.load(run["inputs"]) as data:
            feeds = {name: data[name] for name in data.files}
        np.save(run["output"], session.run(None, feeds)[0])
        report["runs"].append({"output": run["output"], "precision": plan.precision,
                               "providers": session.get_providers()})
    # an option the CPU plugin refuses: ONNX Runtime builds a CPU session instead, which must be refused
    plan = plan_session("openvino", intra_op_threads=1, openvino_precision="fp32")
    plan.providers[0][1]["precision"] = "BF16"  # "CPU only supports FP32, ACCURACY"
    try:
        create_session(job["runs"][0]["model"], plan)
    except OrtTurboError as exc:
        report["refused"] = str(exc)
    report["torch_imported"] = "torch" in sys.modules
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
