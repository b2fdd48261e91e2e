"""Optional tool (not a test): check the sgm stand-in (tests/webui_stub/sgm) against the real sgm UNet.

sgm (Stability-AI/generative-models) is not on PyPI and its code is not committed here. To run the check,
put the real package somewhere outside the repository, e.g. from a clone at the commit WebUI v1.10.1 pins:

    git -C generative-models archive 45c443b sgm | tar -x -C /tmp/sgm-real
    .venv/bin/python tests/tools/check_sgm_standin.py /tmp/sgm-real

(its imports need einops, omegaconf, packaging, fsspec, Pillow and safetensors, which the engine's .venv has).
The real package is imported without running its ``sgm/__init__.py`` (which pulls in the training engine),
and the stand-in under another package name, so both live in one process. For each configuration of
tests/sgm_unets.py it checks: module names and class names in order, state_dict keys and shapes (the full-size
SDXL base and refiner on the meta device), the real model's weights loaded strictly into the stand-in, the
forward outputs at several shapes (max abs difference), the same with lib_ort's SDPA attention installed for
the export, and the real model exported by lib_ort and run by ONNX Runtime. Exits non-zero on a mismatch.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import types
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import sgm_unets  # noqa: E402  (appends tests/webui_stub, whose ``sgm`` the real one replaces below)


def _package(name: str, folder: Path) -> None:
    """Register ``name`` as a package at ``folder`` without executing its ``__init__.py``."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    sys.modules[name] = module


def load(real_root: Path):
    for name in [n for n in sys.modules if n == "sgm" or n.startswith("sgm.")]:
        del sys.modules[name]
    for name, folder in (("sgm", "sgm"), ("sgm.modules", "sgm/modules"),
                         ("sgm.modules.diffusionmodules", "sgm/modules/diffusionmodules")):
        _package(name, real_root / folder)
    real = importlib.import_module("sgm.modules.diffusionmodules.openaimodel")
    stub = TESTS / "webui_stub" / "sgm"
    for name, folder in (("standin_sgm", stub), ("standin_sgm.modules", stub / "modules"),
                         ("standin_sgm.modules.diffusionmodules", stub / "modules" / "diffusionmodules")):
        _package(name, folder)
    ours = importlib.import_module("standin_sgm.modules.diffusionmodules.openaimodel")
    return real, ours


def structure(model):
    return [(name, type(m).__name__) for name, m in model.named_modules()]


def shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def main(real_root: str) -> int:
    import contextlib
    import io

    from lib_ort.attention import sdpa_attention
    from lib_ort.bench.architectures import _randomize_zero_parameters, example_inputs

    real_mod, ours_mod = load(Path(real_root))
    print(f"real: {real_mod.__file__}\nours: {ours_mod.__file__}")
    failures = []

    def build(module, name, device="cpu", seed=0):
        torch.manual_seed(seed)
        with contextlib.redirect_stdout(io.StringIO()), torch.device(device):  # sgm prints while building
            model = module.UNetModel(**sgm_unets.CONFIGS[name])
        if device != "meta":
            _randomize_zero_parameters(model, torch.Generator().manual_seed(seed + 1))
        return model.eval().requires_grad_(False)

    for name in ("sdxl-base", "sdxl-refiner"):
        real, ours = build(real_mod, name, "meta"), build(ours_mod, name, "meta")
        same = shapes(real) == shapes(ours) and structure(real) == structure(ours)
        print(f"{name} (meta): {len(shapes(real))} tensors, {sum(p.numel() for p in real.parameters())} parameters; "
              f"keys, shapes, module names and classes identical: {same}")
        if not same:
            failures.append(f"{name}: structure differs")

    for name in ("tiny-sgm-sdxl", "tiny-sgm-refiner"):
        real, ours = build(real_mod, name), build(ours_mod, name, seed=1)
        same = shapes(real) == shapes(ours) and structure(real) == structure(ours)
        probe = example_inputs(real, 1, 8, 8, 77)
        with torch.no_grad():
            before = float((ours(**probe) - real(**probe)).abs().max())
        ours.load_state_dict(real.state_dict(), strict=True)
        print(f"{name}: before loading the real weights the outputs differ by {before:.3g} (the comparison can fail)")
        print(f"{name}: keys, shapes, module names and classes identical: {same}; strict load: ok")
        if not same:
            failures.append(f"{name}: structure differs")
        for b, h, w, s in [(1, 8, 8, 77), (2, 16, 8, 154), (3, 8, 24, 77)]:
            inputs = example_inputs(real, b, h, w, s, seed=b)
            with torch.no_grad():
                ref = real(**inputs)
                out = ours(**inputs)
                with sdpa_attention(real):
                    ref_sdpa = real(**inputs)
                with sdpa_attention(ours):
                    out_sdpa = ours(**inputs)
            diff, diff_sdpa = float((out - ref).abs().max()), float((out_sdpa - ref_sdpa).abs().max())
            print(f"  {(b, h, w, s)}: |ref| max {float(ref.abs().max()):.3f}; max abs diff ours-real {diff:.3g}, "
                  f"with the export's SDPA attention {diff_sdpa:.3g}, SDPA-real vs real {float((ref_sdpa - ref).abs().max()):.3g}")
            if diff > 1e-5 or diff_sdpa > 1e-5:
                failures.append(f"{name} {(b, h, w, s)}: outputs differ by {diff}, {diff_sdpa}")
        _check_export(real, ours, name, failures)

    _check_xformers_class(real_mod, ours_mod, build, failures)
    print("FAILED:\n  " + "\n  ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


def _check_xformers_class(real_mod, ours_mod, build, failures):
    """With xformers "available", both build MemoryEfficientCrossAttention. xformers is not installed: the real
    class gets a stand-in ``xformers.ops.memory_efficient_attention`` (plain SDPA over [batch*heads, tokens, dim])."""
    import torch.nn.functional as F

    from lib_ort.attention import sdpa_attention
    from lib_ort.bench.architectures import example_inputs

    real_attention = sys.modules["sgm.modules.attention"]
    ours_attention = sys.modules["standin_sgm.modules.attention"]
    ops = types.SimpleNamespace(memory_efficient_attention=lambda q, k, v, attn_bias=None, op=None:
                                F.scaled_dot_product_attention(q, k, v))
    real_attention.xformers = types.SimpleNamespace(ops=ops)
    real_attention.XFORMERS_IS_AVAILABLE = ours_attention.XFORMERS_IS_AVAILABLE = True
    try:
        real, ours = build(real_mod, "tiny-sgm-sdxl"), build(ours_mod, "tiny-sgm-sdxl", seed=1)
        classes = {type(m).__name__ for m in real.modules() if type(m).__name__.endswith("Attention")}
        same = shapes(real) == shapes(ours) and structure(real) == structure(ours)
        ours.load_state_dict(real.state_dict(), strict=True)
        inputs = example_inputs(real, 2, 16, 8, 154, seed=3)
        with torch.no_grad():
            diff = float((ours(**inputs) - real(**inputs)).abs().max())
            with sdpa_attention(real) as patched:
                diff_sdpa = float((real(**inputs) - ours(**inputs)).abs().max())
        print(f"xformers mode: attention classes {sorted(classes)}, structure identical: {same}, max abs diff "
              f"ours-real {diff:.3g}; the export's SDPA patch covers {patched} class(es), diff {diff_sdpa:.3g}")
        if not same or diff > 1e-5 or diff_sdpa > 1e-5 or classes != {"MemoryEfficientCrossAttention"}:
            failures.append("xformers mode differs")
    finally:
        real_attention.XFORMERS_IS_AVAILABLE = ours_attention.XFORMERS_IS_AVAILABLE = False


def _wiring(graph):
    """Each node as its op type and, per input slot, the op type of what feeds it (operand order matters to
    ORT's fusions: e.g. BiasAdd matches Add(feed-forward, skip) and not Add(skip, feed-forward))."""
    producer = {o: n.op_type for n in graph.node for o in n.output}
    graph_inputs = {i.name for i in graph.input}
    weights = {t.name for t in graph.initializer}

    def source(name):
        return producer.get(name) or ("input" if name in graph_inputs else "weight" if name in weights else name)

    return [(n.op_type, tuple(source(i) for i in n.input)) for n in graph.node]


def _check_export(real, ours, name, failures):
    """lib_ort exports the real sgm model; ONNX Runtime's output matches the real torch forward, and the
    stand-in's export is the same graph (node by node: op types, in order), so ORT fuses both alike."""
    import onnx
    import onnxruntime as ort

    from lib_ort.bench.architectures import example_inputs
    from lib_ort.export import export_model
    from lib_ort.parts.unet import UNET

    with tempfile.TemporaryDirectory() as tmp:
        result = export_model(UNET, real, Path(tmp) / "export")
        ours_path = export_model(UNET, ours, Path(tmp) / "ours").model_path
        real_ops, ours_ops = (_wiring(onnx.load(str(p), load_external_data=False).graph)
                              for p in (result.model_path, ours_path))
        print(f"  exported graphs: {len(real_ops)} nodes (real), {len(ours_ops)} (stand-in); same nodes, in order, "
              f"with the same producers in each input slot: {real_ops == ours_ops}")
        if real_ops != ours_ops:
            failures.append(f"{name}: the stand-in's export is another graph")
        session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
        inputs = example_inputs(real, 2, 16, 8, 154, seed=7)
        with torch.no_grad():
            ref = real(**inputs)
        feed = {"sample": inputs["x"], "timestep": inputs["timesteps"], "encoder_hidden_states": inputs["context"],
                "y": inputs["y"]}
        out = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feed.items()})[0])
        rel = float((out - ref).abs().max() / ref.abs().max())
        print(f"  real {name} exported by lib_ort (inputs {list(result.input_names)}), ORT vs torch rel err {rel:.3g}")
        if rel > 1e-4:
            failures.append(f"{name}: export of the real class differs by {rel}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
