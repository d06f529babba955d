"""Every malformed request gets a clear 4xx JSON error naming the field; overload gets 503 +
Retry-After; API keys and the per-key rate limit; a bounded schemathesis fuzz finds no 5xx."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serve.gate.auth import key_digest
from tests.serve_harness import deployed, local_args

APP = "sana-hardening"
KEYS = {name: f"sk-test-{name}-0123456789" for name in ("table", "fuzz", "limit", "other")}
URL = "/v1/images/generations"


@pytest.fixture(scope="module")
def base_url(ray_serve, tiny_checkpoint):
    args = local_args(
        str(tiny_checkpoint),
        denoiser={"deployment": {"max_ongoing_requests": 1, "max_queued_requests": 1},
                  "batching": {"max_batch_size": 2, "batch_wait_timeout_s": 0.0}},
    )
    args["gateway"]["limits"] = {
        "max_prompt_chars": 200, "max_images": 2, "min_side": 64, "max_side": 512, "max_aspect_ratio": 4.0,
        "max_steps": 2, "max_guidance": 20.0, "max_body_bytes": 4096,
    }
    args["gateway"]["admission"] = {"max_inflight": 2}
    args["auth"] = {"enabled": True, "key_hashes": [key_digest(k) for k in KEYS.values()],
                    "requests_per_minute": 1, "burst": 300}
    with deployed(args, APP, "/"):
        yield ray_serve


def _auth(name: str = "table") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


GOOD = {"prompt": "a red fox", "size": "256x256", "num_inference_steps": 1, "seed": 1}


def _json(**changes) -> bytes:
    body = {**GOOD, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not _DROP}).encode()


_DROP = object()
JSON = {"content-type": "application/json"}

# (case id, raw body, extra headers, expected status, expected `param` or None)
MALFORMED = [
    ("empty-body", b"", JSON, 400, None),
    ("json-null", b"null", JSON, 400, None),
    ("json-array", b"[]", JSON, 400, None),
    ("json-string", b'"a fox"', JSON, 400, None),
    ("broken-json", b'{"prompt": "a fox"', JSON, 400, None),
    ("trailing-garbage", b'{"prompt": "a fox"} x', JSON, 400, None),
    ("bad-utf8", b'{"prompt": "a \xff fox"}', JSON, 400, None),
    ("deep-nesting", b'{"prompt": ' + b"[" * 2000 + b"]" * 2000 + b"}", JSON, 400, None),
    ("text-plain", _json(), {"content-type": "text/plain"}, 415, None),
    ("no-content-type", _json(), {}, 415, None),
    ("form", b"prompt=a+fox", {"content-type": "application/x-www-form-urlencoded"}, 415, None),
    ("too-large", _json(prompt="x" * 5000), JSON, 413, None),
    ("missing-prompt", _json(prompt=_DROP), JSON, 400, "prompt"),
    ("null-prompt", _json(prompt=None), JSON, 400, "prompt"),
    ("int-prompt", _json(prompt=5), JSON, 400, "prompt"),
    ("list-prompt", _json(prompt=["a", "b"]), JSON, 400, "prompt"),
    ("empty-prompt", _json(prompt=""), JSON, 400, "prompt"),
    ("blank-prompt", _json(prompt="   \n"), JSON, 400, "prompt"),
    ("long-prompt", _json(prompt="x" * 201), JSON, 400, "prompt"),
    ("long-negative", _json(negative_prompt="x" * 201), JSON, 400, "negative_prompt"),
    ("int-negative", _json(negative_prompt=3), JSON, 400, "negative_prompt"),
    ("n-zero", _json(n=0), JSON, 400, "n"),
    ("n-negative", _json(n=-1), JSON, 400, "n"),
    ("n-too-many", _json(n=3), JSON, 400, "n"),
    ("n-string", _json(n="2"), JSON, 400, "n"),
    ("n-float", _json(n=1.5), JSON, 400, "n"),
    ("n-bool", _json(n=True), JSON, 400, "n"),
    ("size-word", _json(size="large"), JSON, 400, "size"),
    ("size-one-number", _json(size="512"), JSON, 400, "size"),
    ("size-zero", _json(size="0x512"), JSON, 400, "size"),
    ("size-huge", _json(size="99999x512"), JSON, 400, "size"),
    ("size-too-small", _json(size="512x32"), JSON, 400, "size"),
    ("size-too-big", _json(size="1024x1024"), JSON, 400, "size"),
    ("size-aspect", _json(size="512x64"), JSON, 400, "size"),
    ("size-int", _json(size=512), JSON, 400, "size"),
    ("size-3d", _json(size="256x256x3"), JSON, 400, "size"),
    ("size-negative", _json(size="-256x256"), JSON, 400, "size"),
    ("steps-zero", _json(num_inference_steps=0), JSON, 400, "num_inference_steps"),
    ("steps-too-many", _json(num_inference_steps=3), JSON, 400, "num_inference_steps"),
    ("steps-string", _json(num_inference_steps="1"), JSON, 400, "num_inference_steps"),
    ("guidance-negative", _json(guidance_scale=-1), JSON, 400, "guidance_scale"),
    ("guidance-too-big", _json(guidance_scale=21), JSON, 400, "guidance_scale"),
    ("guidance-string", _json(guidance_scale="4.5"), JSON, 400, "guidance_scale"),
    ("guidance-nan", _json().replace(b'"seed": 1', b'"seed": 1, "guidance_scale": NaN'), JSON, 400, None),
    ("guidance-infinity", _json().replace(b'"seed": 1', b'"seed": 1, "guidance_scale": Infinity'), JSON, 400, None),
    ("guidance-overflow", _json().replace(b'"seed": 1', b'"seed": 1, "guidance_scale": 1e400'), JSON, 400,
     "guidance_scale"),
    ("seed-negative", _json(seed=-1), JSON, 400, "seed"),
    ("seed-huge", _json(seed=2**64), JSON, 400, "seed"),
    ("seed-float", _json(seed=1.5), JSON, 400, "seed"),
    ("seed-string", _json(seed="7"), JSON, 400, "seed"),
    ("format-gif", _json(output_format="gif"), JSON, 400, "output_format"),
    ("format-null", _json(output_format=None), JSON, 400, "output_format"),
    ("response-format-unknown", _json(response_format="pdf"), JSON, 400, "response_format"),
    ("partial-images-over-3", _json(partial_images=4), JSON, 400, "partial_images"),
    ("stream-not-bool", _json(stream="yes"), JSON, 400, "stream"),
    ("stream-options-unknown", _json(stream_options={"colour": True}), JSON, 400, "stream_options"),
    ("unknown-field", _json(colour="red"), JSON, 400, "colour"),
    ("unknown-model", _json(model="dall-e-9"), JSON, 404, "model"),
    ("model-int", _json(model=5), JSON, 400, "model"),
    ("user-int", _json(user=5), JSON, 400, "user"),
]


def test_malformed_requests_get_4xx_json_naming_the_field_and_good_ones_still_work(base_url):
    assert len(MALFORMED) >= 40
    failures = []
    for case, body, headers, status, param in MALFORMED:
        response = httpx.post(f"{base_url}{URL}", content=body, headers={**headers, **_auth()}, timeout=60)
        try:
            error = response.json()["error"]
            ok = (response.status_code == status and error["param"] == param and error["message"]
                  and "Traceback" not in response.text)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            failures.append((case, response.status_code, response.text[:200]))
    assert not failures, failures
    good = httpx.post(f"{base_url}{URL}", json=GOOD, headers=_auth(), timeout=120)
    assert good.status_code == 200, good.text


def test_unknown_paths_and_methods_are_json_errors(base_url):
    missing = httpx.get(f"{base_url}/v1/nothing", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    wrong = httpx.get(f"{base_url}{URL}", timeout=30)
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_api_keys_and_health(base_url):
    assert httpx.post(f"{base_url}{URL}", json=GOOD, timeout=30).status_code == 401
    bad = httpx.post(f"{base_url}{URL}", json=GOOD, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    assert bad.json()["error"]["type"] == "authentication_error"
    basic = httpx.get(f"{base_url}/v1/models", headers={"Authorization": "Basic abc"}, timeout=30)
    assert basic.status_code == 401
    assert httpx.get(f"{base_url}/v1/models", headers=_auth("other"), timeout=30).status_code == 200
    assert httpx.get(f"{base_url}/healthz", timeout=30).status_code == 200  # probes need no key


def test_rate_limit_per_key(base_url):
    # 300 at once, then one a minute: the 301st request within a minute must be refused.
    statuses = [httpx.get(f"{base_url}/v1/models", headers=_auth("limit"), timeout=30) for _ in range(305)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses][-10:]
    assert int(limited[0].headers["retry-after"]) >= 1
    assert limited[0].json()["error"]["type"] == "rate_limit_error"
    # Another key is not affected.
    assert httpx.get(f"{base_url}/v1/models", headers=_auth("other"), timeout=30).status_code == 200


def test_overload_gets_503_with_retry_after_and_nothing_is_lost(base_url):
    body = {**GOOD, "size": "512x512", "num_inference_steps": 2, "n": 2}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda i: httpx.post(f"{base_url}{URL}", json={**body, "seed": i}, headers=_auth("other"), timeout=120),
            range(8),
        ))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, [r.text[:200] for r in responses]
    assert 503 in statuses and 200 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["type"] == "overloaded_error"
    assert httpx.post(f"{base_url}{URL}", json=body, headers=_auth("other"), timeout=120).status_code == 200


def test_openapi_schema_publishes_the_configured_limits(base_url):
    spec = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    schema = spec["paths"][URL]["post"]["requestBody"]["content"]["application/json"]["schema"]
    properties = schema["properties"]
    steps = next(b for b in properties["num_inference_steps"]["anyOf"] if b.get("type") == "integer")
    assert steps["maximum"] == 2
    assert properties["n"]["maximum"] == 2 and properties["prompt"]["maxLength"] == 200
    size = next(b for b in properties["size"]["anyOf"] if b.get("type") == "string")
    assert size["pattern"] == "^[0-9]{1,5}x[0-9]{1,5}$"


def test_schemathesis_fuzz_finds_no_server_errors(base_url, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "40", "--phases", "examples,coverage,fuzzing",
         "-H", f"Authorization: Bearer {KEYS['fuzz']}", "--request-timeout", "60",
         "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
