"""SDXL in the WebUI: sgm's UNet (the stand-in of tests/webui_stub/sgm) behind the WebUI's routing, ``y`` from
the conditioner's 'vector', CFG-free rows, and the refiner switch mid-job."""

import pytest
import torch

from conftest import StubSdModel, script_runner
from modules import sd_models, sd_unet, shared
from modules.processing import StableDiffusionProcessing, run_job

from lib_ort.webui import service
from lib_ort.webui.unet import LABEL

BASE = "models/Stable-diffusion/xl/tiny-sgm-sdxl.safetensors"
REFINER = "models/Stable-diffusion/xl/tiny-sgm-refiner.safetensors"
OTHER_REFINER = "models/Stable-diffusion/xl/refiner-not-exported.safetensors"


@pytest.fixture(scope="module")
def sdxl_models(extension):
    models = {BASE: StubSdModel("tiny-sgm-sdxl", BASE), REFINER: StubSdModel("tiny-sgm-refiner", REFINER),
              OTHER_REFINER: StubSdModel("tiny-sgm-refiner", OTHER_REFINER, seed=1)}
    sd_models.loadable_models.update(models)
    yield models
    for name in models:
        sd_models.loadable_models.pop(name, None)


def _export(model):
    loaded, shared.sd_model = shared.sd_model, model
    try:
        return service.export_loaded_checkpoint("cpu")
    finally:
        shared.sd_model = loaded


@pytest.fixture(scope="module")
def base_artefact(sdxl_models):
    return _export(sdxl_models[BASE])


@pytest.fixture(scope="module")
def refiner_artefact(sdxl_models):
    return _export(sdxl_models[REFINER])


@pytest.fixture()
def sdxl_webui(fresh_webui, sdxl_models):
    """``fresh_webui`` with the SDXL base loaded (the refiner test may leave the refiner loaded: put back)."""
    shared.sd_model = sdxl_models[BASE]
    for model in sdxl_models.values():
        model.rows_per_call.clear()
        model.vectors.clear()
    yield sdxl_models
    sd_unet.apply_unet("None")
    shared.sd_model = sdxl_models[BASE]
    for model in sdxl_models.values():
        vars(model.unet).pop("forward", None)


def run(extension, label, cfg_free=True, **kwargs):
    shared.opts.data["sd_unet"] = label
    p = StableDiffusionProcessing(script_runner(extension, cfg_free), seed=3, **kwargs)
    return p, run_job(p)


def ort_turbo(infotext):
    from lib_ort.bench.webui import _ort_turbo_value

    return _ort_turbo_value(infotext)


@pytest.mark.parametrize("cfg_free, cfg_scale, rows", [(True, 1.0, 2), (False, 1.0, 4), (True, 7.0, 4)])
def test_sdxl_rows_and_y_from_the_conditioner_reach_the_artefact(sdxl_webui, base_artefact, extension,
                                                                  cfg_free, cfg_scale, rows):
    base = sdxl_webui[BASE]
    p, processed = run(extension, LABEL, cfg_free, batch_size=2, steps=2, cfg_scale=cfg_scale)
    assert base.rows_per_call == [rows] * 2
    assert ort_turbo(processed.infotexts[0]) == f"{base_artefact['id']} (CPU)"
    assert [tuple(v.shape) for v in base.vectors] == [(rows, 2816)] * 2  # pooled 1280 + 6 size embeddings
    assert ("ORT Turbo CFG-free: True" in processed.infotexts[0]) == (rows == 2)


def test_sdxl_ort_turbo_matches_pytorch(sdxl_webui, base_artefact, extension):
    _, ort = run(extension, LABEL, batch_size=2, steps=2, cfg_scale=7.0)
    _, ref = run(extension, "None", batch_size=2, steps=2, cfg_scale=7.0)
    assert ort_turbo(ort.infotexts[0]) == f"{base_artefact['id']} (CPU)" and ort_turbo(ref.infotexts[0]) is None
    diff = (ort.images[0] - ref.images[0]).abs().max() / ref.images[0].abs().max()
    assert diff < 5e-3


def test_the_y_input_matters_to_the_artefact(sdxl_webui, base_artefact):
    """The vector cond is not dropped on the way: another 'vector' gives another ORT output."""
    from lib_ort.unet import OrtUnet

    artefact = service.find_artefact(sdxl_webui[BASE].sd_checkpoint_info, "cpu")
    unet = OrtUnet(artefact)
    g = torch.Generator().manual_seed(0)
    cond = sdxl_webui[BASE].encode(1, 77, g)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500.0])
    a = unet(x, t, cond["crossattn"], y=cond["vector"])
    b = unet(x, t, cond["crossattn"], y=sdxl_webui[BASE].sdxl_conditioning(cond["crossattn"], cond["vector"][:, :1280],
                                                                            False, height=512, width=768)["vector"])
    assert (a - b).abs().max() > 1e-4


def _refine(extension, label, refiner, **kwargs):
    return run(extension, label, batch_size=1, steps=4, cfg_scale=1.0, refiner_checkpoint=refiner,
               refiner_switch_at=0.5, **kwargs)


def test_refiner_switch_routes_to_the_refiners_own_artefact(sdxl_webui, base_artefact, refiner_artefact, extension):
    p, processed = _refine(extension, LABEL, REFINER)
    text = processed.infotexts[0]
    assert "Refiner: tiny-sgm-refiner" in text
    assert shared.sd_model is sdxl_webui[REFINER]  # the WebUI keeps the refiner loaded after the job
    assert sdxl_webui[BASE].rows_per_call == [1, 1] and sdxl_webui[REFINER].rows_per_call == [1, 1]
    assert [v.shape[1] for v in sdxl_webui[REFINER].vectors] == [2560, 2560]  # the refiner's own conditioner
    assert ort_turbo(text) == f"{base_artefact['id']} (CPU) + {refiner_artefact['id']} (CPU)"
    shared.sd_model = sdxl_webui[BASE]
    _, ref = _refine(extension, "None", REFINER)
    assert ort_turbo(ref.infotexts[0]) is None
    diff = (processed.images[0] - ref.images[0]).abs().max() / ref.images[0].abs().max()
    assert diff < 5e-3


def test_refiner_without_artefact_falls_back_visibly(sdxl_webui, base_artefact, extension):
    _, processed = _refine(extension, LABEL, OTHER_REFINER)
    value = ort_turbo(processed.infotexts[0])
    assert value.startswith("partly PyTorch: ") and "no CPU artefact for xl/refiner-not-exported.safetensors" in value
    assert sdxl_webui[OTHER_REFINER].rows_per_call == [1, 1]


def test_refiner_without_artefact_under_automatic_is_named_in_the_infotext(sdxl_webui, base_artefact, extension):
    """'Automatic' picks ORT Turbo only for a checkpoint with an artefact: the refiner runs on PyTorch, and says so."""
    _, processed = _refine(extension, "Automatic", OTHER_REFINER)
    value = ort_turbo(processed.infotexts[0])
    assert value.startswith("partly PyTorch: "), value
    assert "xl/refiner-not-exported.safetensors" in value and "SD Unet 'Automatic'" in value
    assert sdxl_webui[BASE].rows_per_call == [1, 1] and sdxl_webui[OTHER_REFINER].rows_per_call == [1, 1]


def test_a_checkpoint_loaded_outside_a_job_is_left_to_the_webui(sdxl_webui, base_artefact, extension):
    """The model-loaded hook applies the SD Unet only mid-job; a checkpoint change in the UI is the WebUI's."""
    shared.opts.data["sd_unet"] = LABEL
    sd_models.reload_model_weights(info=sdxl_webui[REFINER].sd_checkpoint_info)
    assert sd_unet.current_unet is None  # load_model: the WebUI applies the SD Unet at the next generation
