"""``bench --profile``: per-category time and FLOPs of one UNet call, eager vs ORT, against the sgemm rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from lib_ort.bench.architectures import example_inputs
from lib_ort.cli import main
from lib_ort.bench.profile import CATEGORIES, node_flops, ort_category, profile_ort, torch_category


def test_node_flops_from_profiler_shapes():
    # Conv 3x3, 4 -> 32 channels, 16x16 output: 32*16*16 outputs, each 4*3*3 multiply-adds
    assert node_flops("Conv", [[1, 4, 16, 16], [32, 4, 3, 3], [32]], [[1, 32, 16, 16]]) == 2 * 32 * 256 * 36
    # grouped conv: weight [Cout, Cin/groups, kh, kw]
    assert node_flops("Conv", [[1, 8, 4, 4], [8, 1, 3, 3]], [[1, 8, 4, 4]]) == 2 * 8 * 16 * 9
    # the weight is a constant, so the profiler lists only the activation
    assert node_flops("MatMul", [[2, 256, 320]], [[2, 256, 1280]]) == 2 * 2 * 256 * 1280 * 320
    # a transposed A ([K, M], as FusedMatMul transA=1 takes it): K = 512, not 4096
    assert node_flops("FusedMatMul", [[1, 512, 4096], [1, 512, 4096]], [[1, 4096, 4096]]) == 2 * 4096 * 4096 * 512
    # cross-attention: 256 queries over 77 keys, hidden 320
    assert node_flops("MultiHeadAttention", [[1, 256, 320], [1, 77, 320], [1, 77, 320]], [[1, 256, 320]]) == \
        4 * 256 * 77 * 320
    # self-attention with its packed QKV projection (bias [3H] listed)
    assert node_flops("Attention", [[1, 256, 32], [96]], [[1, 256, 32]]) == 2 * 256 * 32 * 96 + 4 * 256 * 256 * 32
    assert node_flops("Add", [[1, 4]], [[1, 4]]) == 0
    assert node_flops("Conv", [[1, 4, 16, 16]], [[1, 32, 16, 16]]) == 0  # weight not listed: unknown, not guessed


def test_categories():
    assert ort_category("NhwcConv") == "convolution" and ort_category("MultiHeadAttention") == "attention"
    assert ort_category("ReorderInput") == "layout/copy" and ort_category("Sigmoid") == "elementwise/other"
    assert torch_category("aten::mkldnn_convolution") == "convolution"
    assert torch_category("aten::baddbmm") == "matmul" and torch_category("aten::native_group_norm") == "normalization"
    assert torch_category("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert torch_category("aten::copy_") == "layout/copy" and torch_category("aten::silu") == "elementwise/other"


def _nchwc_block(folder) -> int:
    """ORT's NCHWc channel block on this CPU (16 with AVX-512, 8 with AVX2), from what its profiler reports
    for one 3x3 Conv of 32 channels to 1: ORT pads the output channels to the block and counts that work."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 32, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])], [weight])
    path = Path(folder) / "conv-probe.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    flops = profile_ort(path, [np.ones((1, 32, 8, 8), np.float32)]).flops["convolution"]
    block = flops / (2 * 64 * 32 * 9)
    assert block == int(block) >= 1, flops
    return int(block)


def _conv_flops_by_hooks(model, inputs, block: int = 1) -> float:
    """Multiply-add FLOPs of every Conv2d, from the PyTorch modules (independent of ORT's profiler), with
    channel counts padded as ORT's NCHWc layout pads them: output channels to a multiple of ``block``,
    input channels too unless there are fewer than one block (the first conv reads NCHW directly)."""
    total = [0.0]

    def padded(channels: int) -> int:
        return -(-channels // block) * block

    def hook(module, _args, out):
        kh, kw = module.kernel_size
        cin = module.in_channels // module.groups
        if module.groups == 1 and cin >= block:
            cin = padded(cin)
        cout = padded(module.out_channels) if module.groups == 1 else module.out_channels
        total[0] += 2.0 * out.numel() / module.out_channels * cout * cin * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def test_profile_counts_the_same_work_in_every_graph(shared_registry, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--root", str(shared_registry.root), "bench", "--arch", "tiny-sd2", "--profile", "--height", "128",
                 "--width", "96", "--runs", "2", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    configs = {c["config"]: c for c in result["configs"]}
    assert list(configs) == ["PyTorch eager", "PyTorch SDPA", "PyTorch InvokeAI", "ORT unfused", "ORT cpu recipe"]
    unfused, recipe = configs["ORT unfused"], configs["ORT cpu recipe"]

    model = tiny_model("tiny-sd2")
    inputs = example_inputs(model, 1, 16, 12, 77, seed=0)
    block = _nchwc_block(tmp_path)
    assert block in (1, 4, 8, 16)
    conv = _conv_flops_by_hooks(model, inputs, block)
    # the padding is real work ORT does (the 4-channel output conv as 8 with AVX2, 16 with AVX-512)
    assert conv > _conv_flops_by_hooks(model, inputs) or block == 1
    for graph in (unfused, recipe):
        assert graph["gflop"]["convolution"] == pytest.approx(conv / 1e9, abs=1e-4)  # the JSON rounds to 4 places
        # node times add up to no more than the call (plus the profiler's rounding)
        assert sum(graph["ms"].values()) <= graph["total_ms"] * 1.05 + 0.5
    # fusion moves attention's products out of MatMul into Attention/MultiHeadAttention, but does not remove any
    assert recipe["gflop"]["attention"] > 0 and "attention" not in unfused["gflop"]
    assert sum(recipe["gflop"].values()) == pytest.approx(sum(unfused["gflop"].values()), rel=0.02)
    assert result["call_gflop"] == pytest.approx(sum(unfused["gflop"].values()), abs=1e-3)
    rates = result["sgemm_gflops_by_library"]
    assert set(rates) == {"torch", "onnxruntime"} and result["sgemm_gflops"] == max(rates.values()) > 0
    assert result["max_speedup_over_eager"] == pytest.approx(configs["PyTorch eager"]["total_ms"] / result["floor_ms"],
                                                             rel=0.02)
    webui_paths = {c: configs[c]["total_ms"] for c in ("PyTorch SDPA", "PyTorch InvokeAI")}
    assert result["baseline"] == min(webui_paths, key=webui_paths.get)
    assert result["max_speedup_over_baseline"] == pytest.approx(webui_paths[result["baseline"]] / result["floor_ms"],
                                                                rel=0.02)
    table = (out / "unet-profile-tiny-sd2-cpu.md").read_text()
    assert all(f"| {c} |" in table for c in CATEGORIES) and "sgemm" in table


def test_profile_refuses_gpu_providers(shared_registry, capsys):
    assert main(["--root", str(shared_registry.root), "bench", "--arch", "tiny-sd2", "--profile", "--ep", "cuda"]) == 1
    assert "CPU provider only" in capsys.readouterr().err
