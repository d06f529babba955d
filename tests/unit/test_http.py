"""The HTTP layer over the generation service with fake stages, through ASGI (no Ray, no socket):
status codes, the JSON error shape, request ids, auth, admission, and errors counted and logged
in one place."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import httpx
import pytest

from serve.api.app import build_api
from serve.api.deps import build_deps
from serve.gate.auth import key_digest
from tests.unit.fakes import RecordingMetrics, app_config, fake_stages

KEY = "sk-unit-0123456789"
URL = "/v1/images/generations"


def _api(config=None):
    config = config or app_config()
    stages = fake_stages(config.routes)
    metrics = RecordingMetrics()
    return build_api(build_deps(config, stages.handles(), metrics)), stages, metrics


def _call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_a_generation_answers_openai_shape_with_timings_and_request_id():
    app, _, _ = _api()
    response = _call(app, "POST", URL, json={"prompt": "a fox", "size": "64x64", "n": 2, "seed": 3},
                     headers={"X-Request-Id": "abc"})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["seed"] == 3 and payload["model"] == "r1k" and payload["size"] == "64x64"
    assert [base64.b64decode(d["b64_json"])[:4] for d in payload["data"]] == [b"\x89PNG"] * 2
    assert response.headers["x-request-id"] == "abc"
    assert "denoise;dur=20.0" in response.headers["server-timing"]


@pytest.mark.parametrize("body, headers, status, param", [
    (b'{"prompt": "x", "size": "12x12"}', {}, 400, "size"),
    (b'{"prompt": "x", "model": "nope"}', {}, 404, "model"),
    (b'{"prompt": "x", "n": 5}', {}, 400, "n"),
    (b'{"prompt": "x", "size": "4096x4096", "n": 2}', {}, 400, "n"),  # the 4K route's own limit
    (b'{"prompt": "x", "colour": "red"}', {}, 400, "colour"),
    (b'{"prompt": "x"', {}, 400, None),
    (b'{"prompt": "x"}', {"content-type": "text/plain"}, 415, None),
    (b'{"prompt": "' + b"x" * 70000 + b'"}', {}, 413, None),
])
def test_client_mistakes_are_4xx_json_naming_the_field_and_counted(body, headers, status, param):
    app, stages, metrics = _api()
    response = _call(app, "POST", URL, content=body, headers={"content-type": "application/json", **headers})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    assert response.headers["x-request-id"]
    assert metrics.failed == [("invalid_request_error", status)]
    assert not stages.calls("denoiser:r1k", "denoise")


def test_unknown_paths_and_methods_are_json_errors_through_the_same_handler():
    app, _, metrics = _api()
    missing = _call(app, "GET", "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    wrong = _call(app, "GET", URL)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert metrics.failed == [("invalid_request_error", 404), ("invalid_request_error", 405)]


def test_an_unexpected_error_is_a_500_without_internals_logged_with_the_request_id(caplog):
    app, stages, metrics = _api()
    stages.routes["r1k"][0].failures = [RuntimeError("secret internals")]
    with caplog.at_level(logging.ERROR, logger="sana_serve.api"):
        response = _call(app, "POST", URL, json={"prompt": "a fox", "size": "64x64"}, headers={"X-Request-Id": "r9"})
    assert response.status_code == 500 and "secret" not in response.text
    assert response.json()["error"]["type"] == "server_error"
    logged = [json.loads(record.getMessage()) for record in caplog.records]
    assert logged and logged[0]["request_id"] == "r9" and logged[0]["status"] == 500
    assert "secret internals" in logged[0]["error"]  # the operator sees the cause, the client does not
    assert metrics.failed == [("server_error", 500)]


def test_api_keys_guard_generations_and_models_but_not_health():
    app, _, _ = _api(app_config(auth={"enabled": True, "key_hashes": [key_digest(KEY)]}))
    denied = _call(app, "POST", URL, json={"prompt": "a fox"})
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    assert _call(app, "GET", "/v1/models").status_code == 401
    models = _call(app, "GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["r1k", "r4k"]
    assert _call(app, "GET", "/healthz").json() == {"status": "ok", "routes": ["r1k", "r4k"]}


def test_openapi_publishes_the_configured_limits():
    app, _, _ = _api(app_config(gateway__limits={"max_steps": 7, "max_prompt_chars": 99, "max_images": 3}))
    spec = _call(app, "GET", "/openapi.json").json()
    schema = spec["paths"][URL]["post"]["requestBody"]["content"]["application/json"]["schema"]
    properties = schema["properties"]
    # n's bound is the largest any route takes: the limits' 3 (the 4K route takes 1).
    assert properties["prompt"]["maxLength"] == 99 and properties["n"]["maximum"] == 3
    steps = next(b for b in properties["num_inference_steps"]["anyOf"] if b.get("type") == "integer")
    assert steps["maximum"] == 7
    assert _call(app, "GET", "/docs").status_code == 200


def test_model_cards_list_each_routes_sizes_limits_and_defaults():
    app, stages, _ = _api()
    cards = {card["id"]: card for card in _call(app, "GET", "/v1/models").json()["data"]}
    r1k, r4k = cards["r1k"], cards["r4k"]
    # One size per aspect-ratio bin: the 1024 table's bins fit the route's 2048 px as they are.
    assert "1024x1024" in r1k["sizes"] and "1344x768" in r1k["sizes"] and "768x1344" in r1k["sizes"]
    assert r1k["limits"] == {"min_side": 64, "max_side": 2048, "max_aspect_ratio": 4.0, "max_images": 4,
                             "max_steps": 50, "max_guidance_scale": 20.0, "max_prompt_chars": 2000}
    assert r1k["defaults"] == {"num_inference_steps": 20, "guidance_scale": 4.5}
    # 4096 bins above the route's 4096 px are scaled down to it; none breaks the limits.
    sizes = [tuple(map(int, size.split("x"))) for size in r4k["sizes"]]
    assert (4096, 4096) in sizes and max(max(s) for s in sizes) == 4096 and r4k["limits"]["max_images"] == 1
    assert all(max(w, h) / min(w, h) <= 4.0 and w % 32 == 0 and h % 32 == 0 for w, h in sizes)
    assert [w / h for w, h in sizes] == sorted(w / h for w, h in sizes)  # tallest to widest
    assert not stages.log


def test_the_web_page_is_served_at_the_root_under_any_prefix_and_can_be_turned_off():
    app, _, _ = _api(app_config(auth={"enabled": True, "key_hashes": [key_digest(KEY)]}))
    page = _call(app, "GET", "/")  # no key: a static shell; the API calls it makes need one
    assert page.status_code == 200 and '<base href="/">' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    script = _call(app, "GET", "/ui/page.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert _call(app, "GET", "/ui/secret.txt").status_code == 404

    async def under_prefix() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, root_path="/sana")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/")

    assert '<base href="/sana/">' in asyncio.run(under_prefix()).text
    off, _, _ = _api(app_config(gateway__web_page=False))
    answer = _call(off, "GET", "/")
    assert answer.status_code == 404 and "gateway.web_page" in answer.json()["error"]["message"]
