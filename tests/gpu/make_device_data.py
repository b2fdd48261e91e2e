"""Build the data ``device_check.py`` needs: a tiny SD2 UNet's CUDA artefact and torch references."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lib_ort.architectures import build_unet, example_inputs  # noqa: E402
from lib_ort.describe import state_dict_digest  # noqa: E402
from lib_ort.pipeline import prepare  # noqa: E402
from lib_ort.registry import Registry  # noqa: E402


def main(out: str) -> None:
    out_dir = Path(out)
    registry = Registry(out_dir / "registry")
    model = build_unet("tiny-sd2")
    checkpoint = {"hash": state_dict_digest(model), "name": "tiny-sd2"}
    artefact = prepare(model, registry, checkpoint, "cuda", keep_export=False).artefact
    cases = {}
    for key, (b, h, w, s) in {"b1": (1, 8, 8, 77), "b2": (2, 12, 8, 154), "b3": (3, 8, 16, 77)}.items():
        inputs = example_inputs(model, b, h, w, s, seed=b)
        with torch.no_grad():
            cases[key] = {"inputs": inputs, "output": model(**inputs)}
    torch.save({"cuda_artefact": artefact.id, "cases": cases}, out_dir / "reference.pt")


if __name__ == "__main__":
    main(sys.argv[1])
