"""Property-based: whatever body a client sends — arbitrary strings with unpaired surrogates and
control characters, huge numbers, deep structures, bytes that are not JSON — the API answers 200 or
a JSON 4xx naming what is wrong, never a 5xx. In-process: the real HTTP layer and generation service
over fake stages (no Ray, no socket)."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.api.app import build_api
from serve.api.deps import build_deps
from serve.jobs.book import JobBook
from tests.unit.fakes import LocalHandle, RecordingMetrics, app_config, fake_stages

# Every code point, surrogates (category Cs) and controls included.
TEXT = st.text(st.characters(exclude_categories=()), max_size=24)
SCALARS = st.one_of(TEXT, st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(TEXT, inner, max_size=3)),
                      max_leaves=12)
SMALL_SIZES = st.sampled_from(["64x64", "96x64", "64x128", "auto", "4096x4096", "5000x64", "64x1x1", "0x0"])

FIELDS = {
    "prompt": st.one_of(TEXT, st.sampled_from(["a red heart", "一颗红心 🙂", "nude dragon"]), VALUES),
    "negative_prompt": st.one_of(TEXT, VALUES),
    "model": st.one_of(st.sampled_from(["r1k", "r4k", "nope"]), VALUES),
    "n": st.one_of(st.integers(-2, 6), VALUES),
    "size": st.one_of(SMALL_SIZES, TEXT, VALUES),
    "seed": st.one_of(st.integers(-(2**65), 2**65), VALUES),
    "num_inference_steps": st.one_of(st.integers(-1, 60), VALUES),
    "guidance_scale": st.one_of(st.floats(-1, 30, allow_nan=False), st.integers(-5, 30), VALUES),
    "output_format": st.one_of(st.sampled_from(["png", "jpeg", "webp", "gif"]), VALUES),
    "response_format": st.one_of(st.sampled_from(["b64_json", "url", "svg"]), VALUES),
    "stream": st.one_of(st.booleans(), VALUES),
    "partial_images": st.one_of(st.integers(-1, 5), VALUES),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_progress": st.booleans()}), VALUES),
    "user": st.one_of(TEXT, VALUES),
    "webhook": st.one_of(st.fixed_dictionaries({"url": st.one_of(TEXT, st.just("http://127.0.0.1:9/h"))}), VALUES),
}
BODIES = st.builds(lambda known, extra: {**extra, **known},
                   st.fixed_dictionaries({"prompt": FIELDS["prompt"]},
                                         optional={k: v for k, v in FIELDS.items() if k != "prompt"}),
                   st.dictionaries(TEXT, VALUES, max_size=2))
# Bodies that are not a JSON object at all.
RAW = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda depth: b"[" * depth + b"]" * depth, st.integers(100, 100_000)),
    st.builds(lambda depth: b'{"prompt": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}", st.integers(1, 5000)),
    st.sampled_from([b'{"prompt": NaN}', b'{"prompt": "x", "seed": Infinity}', b'{"prompt": "\\ud800"}',
                     b'{"prompt": "\xff\xfe"}', b"null", b'"a string"', b"", b'{"prompt": "x", "n": 1e999}']),
)
ENDPOINTS = ["/v1/images/generations", "/v1/images/jobs"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    config = app_config(files={"directory": str(tmp_path_factory.mktemp("files"))})
    stages = fake_stages(config.routes)
    deps = build_deps(config, stages.handles(), RecordingMetrics(),
                      LocalHandle(JobBook(config.jobs)))
    return build_api(deps)  # no job runner started: submitted jobs stay queued


def _post(app, path: str, content: bytes) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post(path, content=content, headers={"content-type": "application/json"})

    return asyncio.run(go())


def _check(response: httpx.Response) -> None:
    status = response.status_code
    assert status in (200, 202) or 400 <= status < 500, (status, response.text[:500])
    if status >= 400:
        assert response.json()["error"]["message"]


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                              HealthCheck.too_slow])


@PROPERTY
@given(body=BODIES, path=st.sampled_from(ENDPOINTS))
def test_any_json_body_is_answered_200_or_a_json_4xx_never_5xx(app, body, path, caplog):
    caplog.set_level(logging.ERROR, logger="sana_serve")
    _check(_post(app, path, json.dumps(body).encode()))  # ensure_ascii: surrogates go as \\udxxx escapes
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@PROPERTY
@given(raw=RAW, path=st.sampled_from(ENDPOINTS))
def test_any_bytes_are_answered_with_a_json_4xx_never_5xx(app, raw, path):
    response = _post(app, path, raw)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.json()["error"]["message"]


def test_an_unpaired_surrogate_is_a_400_naming_the_field(app):
    for path in ENDPOINTS:
        for raw, param in ((b'{"prompt": "\\ud800 a fox"}', "prompt"),
                           (b'{"prompt": "a fox", "negative_prompt": "x\\udfff"}', "negative_prompt"),
                           (b'{"prompt": "a fox", "webhook": {"url": "http://\\udc00"}}', "webhook")):
            response = _post(app, path, raw)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == param and "surrogate" in response.json()["error"]["message"]
    paired = _post(app, ENDPOINTS[0], b'{"prompt": "\\ud83d\\ude00 a fox", "size": "64x64"}')  # an emoji
    assert paired.status_code == 200, paired.text
