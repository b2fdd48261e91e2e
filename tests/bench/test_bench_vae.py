"""``bench-vae``: one VAE decode (and encode) in PyTorch, the raw export and the recipe."""

import json

import pytest
import torch

from lib_ort.bench.vae import add_speedups
from lib_ort.bench.vae_architectures import build_vae
from lib_ort.cli import main
from test_bench_profile import _conv_flops_by_hooks


def test_speedups_are_over_the_first_configuration():
    configs = {"PyTorch eager": {"median_ms": 300.0}, "ORT raw export": {"median_ms": 200.0},
               "ORT cpu recipe": {"median_ms": 120.0}}
    assert add_speedups(configs) == 300.0
    assert [c["speedup"] for c in configs.values()] == [1.0, 1.5, 2.5]
    assert add_speedups(configs, "ORT raw export") == 200.0  # the named baseline
    assert [c["speedup"] for c in configs.values()] == [0.67, 1.0, 1.67]


def test_vae_bench_times_torch_raw_export_and_recipe_on_the_same_latents(shared_registry, capsys):
    assert main(["--root", str(shared_registry.root), "bench-vae", "--vae", "tiny-ldm", "--height", "48", "--width",
                 "64", "--batch", "2", "--runs", "3", "--profile", "--encode"]) == 0
    result = json.loads(capsys.readouterr().out)
    decode = result["decode"]
    # InvokeAI leaves the VAE's attention as ldm wrote it: one column for both
    assert list(decode) == ["PyTorch eager = InvokeAI", "PyTorch SDPA", "ORT raw export", "ORT cpu recipe"]
    paths = {c: decode[c]["median_ms"] for c in ("PyTorch eager = InvokeAI", "PyTorch SDPA")}
    assert result["baseline"] == min(paths, key=paths.get) and decode[result["baseline"]]["speedup"] == 1.0
    for name, c in decode.items():
        lo, hi = c["spread_ms"]
        assert 0 < lo <= c["median_ms"] <= hi
        assert c["max_pixel_diff"] <= 1  # fp32 everywhere: at most one rounding step of 255
    # the decoder's convolutions, counted from ORT's node shapes, are what the PyTorch modules compute
    class Decode(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, z):
            return self.vae.decode(z)

    conv = _conv_flops_by_hooks(Decode(build_vae("tiny-ldm", seed=0)), {"z": torch.randn(2, 4, 6, 8)})
    profile = result["profile"]
    assert profile["gflop"]["convolution"] == pytest.approx(conv / 1e9, rel=0.05)
    assert profile["floor_ms"] > 0 and profile["max_speedup_over_eager"] > 0
    encode = result["encode"]  # the encoder on the same images: PyTorch, then the recipe's encoder
    assert list(encode) == ["PyTorch eager = InvokeAI", "PyTorch SDPA", "ORT cpu recipe"]
    assert encode["ORT cpu recipe"]["rel_err"] <= 1e-4 and encode["PyTorch eager = InvokeAI"]["rel_err"] == 0
    assert encode["PyTorch SDPA"]["rel_err"] <= 1e-4
    for c in encode.values():
        assert 0 < c["spread_ms"][0] <= c["median_ms"] <= c["spread_ms"][1]
    listed = {row.id: row.manifest for row in shared_registry.list()}
    assert listed[result["artefact"]]["kind"] == "vae"  # the recipe's artefact is kept


def test_vae_bench_refuses_sizes_the_vae_cannot_decode(shared_registry, capsys):
    assert main(["--root", str(shared_registry.root), "bench-vae", "--vae", "tiny-ldm", "--height", "50"]) == 1
    assert "multiples of 8" in capsys.readouterr().err
