"""The PyTorch baselines: the WebUI's CPU attention paths compute what ldm's eager forward computes, and
a speed-up is reported against the faster of them."""

import pytest
import torch

from lib_ort.attention import is_ldm_style_cross_attention
from lib_ort.bench.architectures import build_unet, example_inputs
from lib_ort.bench.baselines import (BASELINES, baseline_context, baselines_for, fastest_baseline,
                                     is_ldm_style_attn_block, sdpa_attn_block_forward, sliced_attention)
from lib_ort.bench.vae_architectures import build_vae


def _reference_attention(q, k, v):
    return torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v


@pytest.mark.parametrize("rows, q_tokens, k_tokens, slice_mb, expect", [
    (4, 64, 77, 32, "whole"),  # 4*64*77*4 bytes: far below the budget
    (8, 1024, 1024, 8, "rows"),  # 32 MiB of scores, 8 MiB slices: 4 parts <= 8 rows, split the rows
    (2, 2048, 2048, 4, "tokens"),  # 32 MiB, 4 MiB slices: 8 parts > 2 rows, split the query tokens
])
def test_sliced_attention_equals_plain_attention_whichever_way_it_splits(rows, q_tokens, k_tokens, slice_mb, expect,
                                                                         monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(rows, n, 16, generator=g) for n in (q_tokens, k_tokens, k_tokens))
    calls = []
    import lib_ort.bench.baselines as baselines

    real = baselines._attend
    monkeypatch.setattr(baselines, "_attend", lambda *a: calls.append(tuple(a[0].shape)) or real(*a))
    out = sliced_attention(q, k, v, slice_mb=slice_mb)
    torch.testing.assert_close(out, _reference_attention(q, k, v), rtol=1e-4, atol=1e-5)
    if expect == "whole":
        assert calls == [(rows, q_tokens, 16)]
    elif expect == "rows":
        assert len(calls) == 4 and all(c == (rows // 4, q_tokens, 16) for c in calls)
    else:
        assert len(calls) == 8 and all(c == (rows, q_tokens // 8, 16) for c in calls)


@pytest.mark.parametrize("arch", ["tiny-sd1", "tiny-sd2"])
def test_every_baseline_computes_what_ldm_eager_computes_on_the_unet(arch):
    model = build_unet(arch, seed=0)
    inputs = example_inputs(model, batch=2, latent_h=8, latent_w=8, seq=77, seed=0)
    forwards = {type(m).forward for m in model.modules() if is_ldm_style_cross_attention(m)}
    with torch.no_grad():
        reference = model(**inputs)
        for name, swaps in BASELINES.items():
            with baseline_context(model, swaps) as swapped:
                out = model(**inputs)
                if swaps:  # the swap happened (else the comparison would prove nothing)
                    assert swapped >= 1 and {type(m).forward for m in model.modules()
                                             if is_ldm_style_cross_attention(m)} != forwards, name
            torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5, msg=name)
    # and every class has its own forward back
    assert {type(m).forward for m in model.modules() if is_ldm_style_cross_attention(m)} == forwards


def test_sdpa_computes_what_ldm_eager_computes_on_the_vae_and_invokeai_leaves_it_alone():
    vae = build_vae("tiny-ldm", seed=0)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    blocks = [m for m in vae.modules() if is_ldm_style_attn_block(m)]
    assert blocks  # the decoder's mid-block attention
    with torch.no_grad():
        reference = vae.decode(z)
        with baseline_context(vae, BASELINES["PyTorch SDPA"]) as swapped:
            assert swapped == 1 and type(blocks[0]).forward is sdpa_attn_block_forward
            out = vae.decode(z)
        assert "forward" in type(blocks[0]).__dict__  # ldm's own forward is back
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    labels = list(baselines_for(vae))  # InvokeAI installs nothing in a VAE: it is eager there, timed once
    assert labels == ["PyTorch eager = InvokeAI", "PyTorch SDPA"]


def test_unet_baselines_are_three_and_a_diffusers_model_has_one():
    assert list(baselines_for(build_unet("tiny-sd2"))) == ["PyTorch eager", "PyTorch SDPA", "PyTorch InvokeAI"]
    # diffusers' attention already runs SDPA and none of the WebUI's ldm swaps apply
    assert list(baselines_for(build_unet("tiny-sdxl"))) == ["PyTorch eager = SDPA = InvokeAI"]


def test_the_baseline_is_the_faster_webui_path_never_ldm_eager_nor_an_ort_column():
    assert fastest_baseline({"PyTorch eager": 5.0, "PyTorch SDPA": 9.0, "PyTorch InvokeAI": 7.0,
                             "ORT cpu recipe": 1.0}) == "PyTorch InvokeAI"
    assert fastest_baseline({"PyTorch eager": 9.0, "PyTorch SDPA": 6.0, "PyTorch InvokeAI": 7.0}) == "PyTorch SDPA"
    assert fastest_baseline({"PyTorch eager = InvokeAI": 6.0, "PyTorch SDPA": 7.0}) == "PyTorch eager = InvokeAI"
    with pytest.raises(ValueError, match="WebUI attention path"):
        fastest_baseline({"PyTorch eager": 1.0, "ORT cpu recipe": 0.5})
