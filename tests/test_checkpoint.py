"""SD1/SD2 WebUI checkpoints from the command line: config read from the weights, sha256 key."""

import hashlib

import pytest
import torch

from lib_ort.bench.architectures import ARCHITECTURES, build_unet
from lib_ort.checkpoint import PREFIX, file_sha256, ldm_config_from_keys, load_unet_from_checkpoint
from lib_ort.describe import Family, describe_unet


def _shapes(arch, in_channels=None):
    model = build_unet(arch, device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if in_channels:
        c = shapes["input_blocks.0.0.weight"]
        shapes["input_blocks.0.0.weight"] = (c[0], in_channels, *c[2:])
    return shapes


@pytest.mark.parametrize("arch, linear, context", [("sd15", False, 768), ("sd-turbo", True, 1024)])
def test_config_is_read_from_the_weights(arch, linear, context):
    config = ldm_config_from_keys(_shapes(arch))
    expected = dict(ARCHITECTURES[arch].config)
    assert config == expected
    assert config["context_dim"] == context and config.get("use_linear_in_transformer", False) == linear


def test_inpaint_checkpoint_keeps_its_nine_channels():
    assert ldm_config_from_keys(_shapes("sd-turbo", in_channels=9))["in_channels"] == 9


def test_other_checkpoints_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="SDXL checkpoint"):
        ldm_config_from_keys({"label_emb.0.0.weight": (1280, 2816), **_shapes("sd15")})
    with pytest.raises(ValueError, match="no Stable Diffusion UNet weights"):
        ldm_config_from_keys({})
    with pytest.raises(ValueError, match="not an SD1/SD2 UNet"):
        ldm_config_from_keys(_shapes("tiny-sd1"))


def test_full_size_sd2_checkpoint_loads_exactly(tmp_path):
    from safetensors.torch import save_file

    source = build_unet("sd-turbo", device="meta").to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, v in source.state_dict().items():
        state[PREFIX + k] = torch.randn(v.shape, generator=g, dtype=torch.float32).half() if v.numel() < 4096 \
            else torch.full(v.shape, 0.01, dtype=torch.float16)
    state["cond_stage_model.dummy"] = torch.zeros(1)  # other parts of a WebUI checkpoint are ignored
    del source
    path = tmp_path / "sd_turbo.safetensors"
    save_file(state, str(path))
    model = load_unet_from_checkpoint(path)
    assert describe_unet(model).family is Family.SD2
    loaded = model.state_dict()
    for k in ("input_blocks.0.0.bias", "out.2.bias", "time_embed.0.bias"):
        assert torch.equal(loaded[k], state[PREFIX + k].float())
    assert next(model.parameters()).dtype == torch.float32
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="only .safetensors"):
        load_unet_from_checkpoint(tmp_path / "model.ckpt")
