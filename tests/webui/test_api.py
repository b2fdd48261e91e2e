"""The headless routes and /sdapi-style generation with override_settings and alwayson_scripts."""

from fastapi.testclient import TestClient

from conftest import api_app, script_runner
from modules import shared
from modules.processing import StableDiffusionProcessing, run_job



ROUTES = [("POST", "/ort-turbo/v1/export"), ("POST", "/ort-turbo/v1/export-vae"), ("GET", "/ort-turbo/v1/artefacts"),
          ("DELETE", "/ort-turbo/v1/artefacts/{id}")]


def test_with_api_auth_every_route_answers_401_without_the_webuis_login(fresh_webui, exported, no_toolchain):
    """--api --api-auth user1:secret1: as /sdapi does, no login or a wrong one is 401 (asking for Basic), and
    nothing runs: the export is not started, the artefact is not deleted."""
    client = TestClient(api_app(api_auth="user1:secret1,user2:pa:ss"), raise_server_exceptions=False)
    for method, path in ROUTES:
        url = path.format(id=exported["id"])
        for auth in (None, ("user1", "wrong"), ("nobody", "secret1"), ("user1", "sécret")):
            answer = client.request(method, url, json={"provider": "cpu"}, auth=auth)
            assert answer.status_code == 401, (method, url, auth, answer.text)
            assert answer.headers["www-authenticate"] == "Basic"
    assert exported["id"] in [row["id"] for row in client.get("/ort-turbo/v1/artefacts", auth=("user1", "secret1")).json()]
    # a right login passes (a password may hold ':'); a bad body then gets its own error, not 401
    assert client.get("/ort-turbo/v1/artefacts", auth=("user2", "pa:ss")).status_code == 200
    bad = client.post("/ort-turbo/v1/export", json={"provider": "rocm"}, auth=("user1", "secret1"))
    assert bad.status_code == 400


def test_without_api_auth_nothing_extra_and_without_api_no_routes(fresh_webui, exported):
    open_api = TestClient(api_app(), raise_server_exceptions=False)
    assert open_api.get("/ort-turbo/v1/artefacts").status_code == 200
    headless = TestClient(api_app(api=False, nowebui=True), raise_server_exceptions=False)
    assert headless.get("/ort-turbo/v1/artefacts").status_code == 200
    # the WebUI without --api serves no API: ORT Turbo's routes are not there either (the tab needs none)
    ui_only = TestClient(api_app(api=False), raise_server_exceptions=False)
    for method, path in ROUTES:
        assert ui_only.request(method, path.format(id=exported["id"])).status_code in (404, 405)


def test_list_export_delete_round_trip(client, exported):
    from modules import sd_unet

    from lib_ort.webui.unet import OrtTurboUnet

    rows = client.get("/ort-turbo/v1/artefacts").json()
    assert exported["id"] in [r["id"] for r in rows]
    shared.opts.data["sd_unet"] = "ORT Turbo"
    sd_unet.apply_unet()
    param = next(shared.sd_model.model.diffusion_model.parameters())
    made = client.post("/ort-turbo/v1/export", json={"provider": "cpu"})
    assert made.status_code == 200, made.text
    # the WebUI's model is where it was, and ORT Turbo is still the active SD Unet
    after = next(shared.sd_model.model.diffusion_model.parameters())
    assert (after.dtype, after.device) == (param.dtype, param.device)
    assert isinstance(sd_unet.current_unet, OrtTurboUnet)
    manifest = made.json()
    assert manifest["id"] == exported["id"] and manifest["ep"] == "cpu" and manifest["family"] == "sd2"
    assert manifest["checkpoint"]["model_name"] == "turbo_tiny-sd2"


def test_errors_are_http_errors_with_a_message(client):
    bad = client.post("/ort-turbo/v1/export", json={"provider": "rocm"})
    assert bad.status_code == 400 and "unknown provider 'rocm'" in bad.json()["detail"]
    missing = client.delete("/ort-turbo/v1/artefacts/nope-cpu-fp32")
    assert missing.status_code == 404 and "no artefact" in missing.json()["detail"]
    saved = shared.sd_model
    shared.sd_model = None
    try:
        none = client.post("/ort-turbo/v1/export", json={"provider": "cpu"})
        assert none.status_code == 409 and none.json()["detail"] == "no checkpoint is loaded"
    finally:
        shared.sd_model = saved


def test_delete_then_generation_falls_back_then_export_again(client, exported, extension):
    assert client.delete(f"/ort-turbo/v1/artefacts/{exported['id']}").json() == {"deleted": exported["id"]}
    p = StableDiffusionProcessing(script_runner(extension), steps=1, override_settings={"sd_unet": "ORT Turbo"})
    assert "PyTorch fallback: no CPU artefact" in run_job(p).infotexts[0]
    assert client.post("/ort-turbo/v1/export", json={"provider": "CPU"}).status_code == 200


def test_txt2img_with_override_settings_and_alwayson_args_behaves_like_the_ui(client, exported, extension):
    """/sdapi/v1/txt2img: override_settings={"sd_unet": "ORT Turbo"}, alwayson_scripts args [true]."""
    p = StableDiffusionProcessing(script_runner(extension, cfg_free=True), batch_size=2, steps=2, cfg_scale=1.0,
                                  override_settings={"sd_unet": "ORT Turbo"})
    processed = run_job(p)
    assert f"ORT Turbo: {exported['id']} (CPU)" in processed.infotexts[0]
    assert "ORT Turbo CFG-free: True" in processed.infotexts[0]
    assert shared.sd_model.rows_per_call == [2, 2]
    assert "skip_early_cond" not in shared.opts.data
