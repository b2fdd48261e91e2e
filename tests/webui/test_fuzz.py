"""The four ``/ort-turbo/v1/*`` routes under generated requests: methods, ids, bodies, types and sizes.

Hypothesis draws each request (derandomized: the same requests on every run, so CI cannot turn red by
chance). Every answer must be a client error or one of the documented server errors with a message
(``api.STATUS_BY_ERROR``: 503, 507, and 500 for any other ``OrtTurboError``); afterwards the registry must
hold the same artefacts, all valid, no raw export may be gone, and the WebUI must still generate on ONNX
Runtime.

An export whose body is valid gets as far as the optimization; the toolchain then refuses with an
``OrtTurboError`` (a minute-long Olive run per request would make the test take hours; the real export
through these routes is tested in test_api.py).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import api_app, script_runner
from modules import shared
from modules.processing import StableDiffusionProcessing, run_job

from lib_ort.errors import OrtTurboError
from lib_ort.webui import service
from lib_ort.webui.unet import LABEL

REQUESTS = 520
#: route -> its method; a request takes another one about one time in three
ROUTES = {"/ort-turbo/v1/export": "POST", "/ort-turbo/v1/export-vae": "POST", "/ort-turbo/v1/artefacts": "GET",
          "/ort-turbo/v1/artefacts/{id}": "DELETE"}
METHODS = st.sampled_from([None] * 14 + ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"])
#: names a path segment may carry that must never reach anything but an artefact
SPECIAL_IDS = ["exports", ".", "..", "%2e%2e", "trt-cache", ".tmp-x", "../..", "~", "*", "", " ", "nope-cpu-fp32",
               "aaaaaaaaaaaa-cpu-fp32", "0" * 4096]
PROVIDERS = ["Automatic", "CPU", "cpu", "CUDA", "cuda", "TensorRT", "tensorrt", "DirectML", "dml", "OpenVINO (CPU)",
             "openvino", "rocm", "", "AUTOMATIC", "cpu ", None]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=False), st.text(max_size=40))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
BODIES = st.one_of(
    st.fixed_dictionaries({}, optional={"provider": st.one_of(st.sampled_from(PROVIDERS), JSON_VALUES),
                                        "precision": st.one_of(st.sampled_from(["fp16", "fp32", "bf16", "int8"]),
                                                               JSON_VALUES),
                                        "extra": JSON_VALUES}),
    JSON_VALUES,
    st.builds(lambda n: {"provider": "x" * n}, st.integers(min_value=1000, max_value=200_000)),  # sizes
)
RAW_BODIES = st.one_of(st.binary(max_size=256), st.sampled_from([b"{", b"[]", b"null", b"{\"provider\": ", b"\xff\xfe"]))


def _id(draw_id, real_id: str) -> str:
    kind, value = draw_id
    if kind == "special":
        return value
    if kind == "near":  # one character away from the real artefact's id, never the id itself
        return real_id + value if value else real_id.upper()
    return value


IDS = st.one_of(st.tuples(st.just("special"), st.sampled_from(SPECIAL_IDS)),
                st.tuples(st.just("near"), st.text(max_size=3)),
                st.tuples(st.just("text"), st.text(min_size=1, max_size=60)))


@pytest.fixture()
def fuzz_client(fresh_webui, exported, monkeypatch):
    def refuse(progress=None):
        raise OrtTurboError("the optimization toolchain is not started in the fuzz test")

    monkeypatch.setattr(service, "toolchain", refuse)
    return TestClient(api_app(), raise_server_exceptions=False)


def _artefacts():
    return sorted((row.id, row.valid) for row in service.registry().list())


def _exports():
    root = service.registry().root / "exports"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_generated_requests_get_answers_never_crashes(fuzz_client, exported, extension):
    real_id = exported["id"]
    before, exports_before = _artefacts(), _exports()
    seen: Counter = Counter()
    bad: list = []

    @settings(max_examples=REQUESTS, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(method=METHODS, route=st.sampled_from(sorted(ROUTES)), artefact=IDS, body=st.one_of(BODIES, RAW_BODIES.map(lambda b: ("raw", b))),
           content_type=st.sampled_from(["application/json", "text/plain", None]))
    def one_request(method, route, artefact, body, content_type):
        artefact_id = _id(artefact, real_id)
        if artefact_id == real_id:
            return  # deleting the one artefact would change the registry on purpose, not by a bug
        url = route.format(id=quote(artefact_id, safe=""))
        method = method or ROUTES[route]
        if isinstance(body, tuple):
            content = body[1]
        else:
            content = json.dumps(body).encode()
        headers = {"content-type": content_type} if content_type else {}
        answer = fuzz_client.request(method, url, content=content, headers=headers)
        seen[answer.status_code] += 1
        if answer.status_code >= 500:
            try:
                detail = answer.json().get("detail")
            except ValueError:
                detail = None
            if answer.status_code not in (500, 503, 507) or not isinstance(detail, str) or not detail:
                bad.append((method, url[:80], content[:80], answer.status_code, answer.text[:200]))

    start = time.perf_counter()
    one_request()
    elapsed = time.perf_counter() - start
    total = sum(seen.values())
    print(f"\nfuzz: {total} requests in {elapsed:.0f} s, statuses {dict(sorted(seen.items()))}")
    assert total >= 500
    assert not bad, bad[:5]
    # the same artefacts, all valid; no raw export lost (a valid export request leaves the loaded checkpoint's
    # trace for the next try, as a failed optimization does)
    assert _artefacts() == before and set(exports_before) <= set(_exports())
    for name in set(_exports()) - set(exports_before):  # the next tests expect no raw export left behind
        shutil.rmtree(service.registry().root / "exports" / name)
    # the WebUI still generates, on ONNX Runtime
    shared.opts.data["sd_unet"] = LABEL
    processed = run_job(StableDiffusionProcessing(script_runner(extension), steps=1, cfg_scale=1.0))
    assert f"ORT Turbo: {real_id} (CPU)" in processed.infotexts[0]
