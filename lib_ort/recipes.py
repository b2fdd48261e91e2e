"""One Olive optimization recipe per execution provider, as data.

The fused CUDA ops (NhwcConv, GroupNorm, SkipGroupNorm, BiasSplitGelu, BiasAdd, packed attention)
have no CPU or DirectML kernels, so each provider gets its own recipe and its own artefact:

* ``cuda``: every UNet fusion of ORT's transformers optimizer, then fp16 (fp16 inputs and outputs).
* ``tensorrt``: a clean fp32 graph and no ORT fusion; TensorRT builds its own fp16 engine.
* ``dml``: the DirectML-safe fusion set (no NhwcConv, BiasSplitGelu, BiasAdd or SkipLayerNorm;
  channels-first GroupNorm), then fp16.
* ``cpu``: the fusions that have CPU kernels (attention, layer norms, gelu), fp32.
* ``openvino``: a clean fp32 graph and no ORT fusion, as for TensorRT: OpenVINO compiles the ONNX graph
  itself (ORT's contrib ops would fall back to the CPU provider), in bf16 on CPUs that have it.

A recipe is stored whole in the artefact's manifest, so an artefact says how it was made even
after Olive's schema moves on.
"""

from __future__ import annotations

import copy

from .export import WEIGHTS_FILE
from .providers import PROVIDERS, provider

#: The Olive release the recipes are written for (its config schema changes between releases).
OLIVE_VERSION = "0.13.0"

_EXTERNAL_DATA = {
    "save_as_external_data": True,
    "all_tensors_to_one_file": True,
    "external_data_name": WEIGHTS_FILE,
}

#: FusionOptions("unet") switches that would emit ops without CPU kernels.
_CPU_UNSAFE_FUSIONS = {
    "enable_nhwc_conv": False,
    "enable_group_norm": False,
    "enable_skip_group_norm": False,
    "enable_bias_splitgelu": False,
    "enable_packed_qkv": False,
    "enable_packed_kv": False,
    "enable_bias_add": False,
}

_DML_FUSIONS = {
    "enable_gelu": True,
    "enable_layer_norm": True,
    "enable_attention": True,
    "use_multi_head_attention": True,
    "enable_skip_layer_norm": False,
    "enable_embed_layer_norm": True,
    "enable_bias_skip_layer_norm": False,
    "enable_bias_gelu": True,
    "enable_gelu_approximation": False,
    "enable_qordered_matmul": False,
    "enable_shape_inference": True,
    "enable_gemm_fast_gelu": False,
    "enable_nhwc_conv": False,
    "enable_group_norm": True,
    "group_norm_channels_last": False,
    "enable_skip_group_norm": False,
    "enable_bias_splitgelu": False,
    "enable_packed_qkv": True,
    "enable_packed_kv": True,
    "enable_bias_add": False,
}


def _identity(ep: str) -> dict:
    """What a recipe says about its provider, from the provider table (stored with it in the manifest)."""
    p = provider(ep)
    return {"provider": p.ort_name, "device": p.device, "precision": p.precision}


#: fp16 recipes keep the time embedding (timestep -> Mul -> Sin/Cos) in fp32: after the fp16 pass the
#: optimization child rebuilds it from the fp32 export and makes the timestep input FLOAT
#: (``graph.fp32_time_embedding``).
RECIPES: dict[str, dict] = {
    "cuda": {
        **_identity("cuda"),
        "fp32_time_embedding": True,
        "passes": {
            "optimize": {
                "type": "OrtTransformersOptimization",
                "model_type": "unet",
                "opt_level": 0,
                "float16": True,
                "use_gpu": True,
                "keep_io_types": False,
                **_EXTERNAL_DATA,
            }
        },
    },
    "tensorrt": {
        **_identity("tensorrt"),
        "passes": {"clean": {"type": "OnnxPeepholeOptimizer", **_EXTERNAL_DATA}},
    },
    "dml": {
        **_identity("dml"),
        "passes": {
            "optimize": {
                "type": "OrtTransformersOptimization",
                "model_type": "unet",
                "opt_level": 0,
                "float16": True,
                "use_gpu": True,
                "keep_io_types": False,
                "force_fp32_ops": ["RandomNormalLike"],
                "force_fp16_inputs": {"GroupNorm": [0, 1, 2]},
                "optimization_options": _DML_FUSIONS,
                **_EXTERNAL_DATA,
            }
        },
    },
    "openvino": {
        **_identity("openvino"),
        "passes": {"clean": {"type": "OnnxPeepholeOptimizer", **_EXTERNAL_DATA}},
    },
    "cpu": {
        **_identity("cpu"),
        "passes": {
            "optimize": {
                "type": "OrtTransformersOptimization",
                "model_type": "unet",
                "opt_level": 0,
                "float16": False,
                "use_gpu": False,
                "optimization_options": _CPU_UNSAFE_FUSIONS,
                **_EXTERNAL_DATA,
            }
        },
    },
}


def get_recipe(ep: str) -> dict:
    provider(ep)  # a ValueError for an unknown key
    return copy.deepcopy(RECIPES[ep])


def olive_config(recipe: dict, model_folder: str, model_file: str, output_dir: str, cache_dir: str) -> dict:
    """The Olive 0.13 workflow config that applies ``recipe`` to an exported ONNX model."""
    return {
        "input_model": {"type": "ONNXModel", "model_path": model_folder, "onnx_file_name": model_file},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": recipe["device"], "execution_providers": [recipe["provider"]]}],
            }
        },
        "passes": copy.deepcopy(recipe["passes"]),
        "host": "local_system",
        "target": "local_system",
        "evaluate_input_model": False,
        "cache_dir": cache_dir,
        "output_dir": output_dir,
        "log_severity_level": 1,
    }


# -- VAE ------------------------------------------------------------------------------------------
# The VAE (decoder and encoder) gets the same treatment through ORT's "vae" model type: GroupNorm,
# NhwcConv and the single-head self-attention fusions on CUDA, the CPU-safe subset on CPU. fp16 is a
# choice on CUDA and DirectML (the WebUI's "fp16 VAE" setting; the stock SDXL VAE overflows in fp16,
# which the runtime's NaN guard catches), never on CPU. TensorRT gets the clean fp32 graph.

def _vae_pass(unet_recipe: dict, float16: bool) -> dict:
    passes = copy.deepcopy(unet_recipe["passes"])
    for p in passes.values():
        if p["type"] == "OrtTransformersOptimization":
            p["model_type"] = "vae"
            p["float16"] = float16
            if not float16:
                p.pop("keep_io_types", None)
                p.pop("force_fp16_inputs", None)
    return passes


VAE_RECIPES: dict[tuple[str, str], dict] = {
    (ep, precision): dict(copy.deepcopy({k: v for k, v in RECIPES[ep].items() if k not in ("passes", "fp32_time_embedding")}),
                          precision=precision, model_type="vae", passes=_vae_pass(RECIPES[ep], precision == "fp16"))
    for ep, precisions in ((p.key, p.vae_precisions) for p in PROVIDERS)
    for precision in precisions
}


def vae_precision(ep: str, want_fp16: bool) -> str:
    """The VAE precision for ``ep``: fp16 only where asked for and where the provider runs it fast."""
    return "fp16" if want_fp16 and (ep, "fp16") in VAE_RECIPES else "fp32"


def cpu_fp16_vae_recipe() -> dict:
    """An fp16 VAE graph the CPU provider runs (ORT casts around the ops it has no fp16 kernel for). Its
    output is fp16, so a VAE that overflows in fp16 gives inf/NaN here exactly as on CUDA: the NaN guard
    can be checked on a machine without a GPU. Slow; not offered to users."""
    return dict(get_vae_recipe("cpu", "fp32"), precision="fp16",
                passes={"fp16": {"type": "OnnxFloatToFloat16", "keep_io_types": False, **_EXTERNAL_DATA}})


def cpu_fp16_unet_recipe() -> dict:
    """An fp16 UNet graph the CPU provider runs, with the time embedding kept fp32 as in the CUDA recipe:
    the fp16 numerics (fp32 timestep, the NaN guard on an overflowing UNet) can be checked without a GPU.
    Slow; not offered to users."""
    return dict(get_recipe("cpu"), precision="fp16", fp32_time_embedding=True,
                passes={"fp16": {"type": "OnnxFloatToFloat16", "keep_io_types": False, **_EXTERNAL_DATA}})


def get_vae_recipe(ep: str, precision: str) -> dict:
    try:
        return copy.deepcopy(VAE_RECIPES[(ep, precision)])
    except KeyError:
        offered = ", ".join(f"{e}/{p}" for e, p in VAE_RECIPES)
        raise ValueError(f"no VAE recipe for {ep} in {precision}; choose one of: {offered}") from None
