"""Request validation and error mapping without Ray: one model gives both checks and schema."""

from __future__ import annotations

import json

import pytest

from serve.config import Limits
from serve.errors import BadRequest, Overloaded, PayloadTooLarge, StageFailed, error_response, to_api_error
from serve.gate.validation import RequestValidator

LIMITS = Limits(max_prompt_chars=20, max_images=2, min_side=64, max_side=512, max_aspect_ratio=4.0, max_steps=3,
                max_guidance=10.0, max_body_bytes=512)
VALIDATOR = RequestValidator(LIMITS, max_images=2)


def _error(body: bytes | dict) -> BadRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(BadRequest) as raised:
        VALIDATOR.parse(raw)
    return raised.value


@pytest.mark.parametrize("body, param, words", [
    ({"prompt": " \t"}, "prompt", "must not be empty"),
    ({"prompt": "x" * 21}, "prompt", "at most 20"),
    ({"prompt": "x", "negative_prompt": "y" * 21}, "negative_prompt", "at most 20"),
    ({"prompt": "x", "n": 3}, "n", "less than or equal to 2"),
    ({"prompt": "x", "n": True}, "n", "valid integer"),
    ({"prompt": "x", "size": "512"}, "size", "WIDTHxHEIGHT"),
    ({"prompt": "x", "size": "1024x512"}, "size", "[64, 512]"),
    ({"prompt": "x", "size": "512x64"}, "size", "aspect ratio"),
    ({"prompt": "x", "num_inference_steps": 4}, "num_inference_steps", "less than or equal to 3"),
    ({"prompt": "x", "guidance_scale": -0.5}, "guidance_scale", "greater than or equal to 0"),
    ({"prompt": "x", "guidance_scale": "4"}, "guidance_scale", "valid number"),
    ({"prompt": "x", "seed": 2**63}, "seed", "less than or equal to"),
    ({"prompt": "x", "output_format": "gif"}, "output_format", "png"),
    ({"prompt": "x", "colour": "red"}, "colour", "unknown field"),
    ({"size": "64x64"}, "prompt", "required"),
])
def test_each_limit_is_a_400_naming_its_field(body, param, words):
    error = _error(body)
    assert error.param == param and words in error.message, error.message


@pytest.mark.parametrize("raw, words", [
    (b"[]", "JSON object"),
    (b'{"prompt": "x"', "not valid JSON"),
    (b'{"prompt": "x", "guidance_scale": NaN}', "not valid JSON"),
    (b'{"prompt": "\xff"}', "UTF-8"),
    (b"[" * 400 + b"]" * 10, "not valid JSON"),
])
def test_bodies_that_are_not_json_objects(raw, words):
    error = _error(raw)
    assert error.param is None and words in error.message


def test_deep_nesting_and_size():
    with pytest.raises(PayloadTooLarge):
        VALIDATOR.parse(b'{"prompt": "' + b"x" * 600 + b'"}')
    deep = RequestValidator(Limits(max_body_bytes=1 << 20), 4)
    with pytest.raises(BadRequest, match="nested too deeply"):
        deep.parse(b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}")


def test_valid_requests_pass_with_defaults_and_auto_size():
    request = VALIDATOR.parse(b'{"prompt": "a fox", "guidance_scale": 3}')
    assert (request.n, request.size, request.guidance_scale, request.output_format) == (1, None, 3.0, "png")
    assert VALIDATOR.parse(b'{"prompt": "a fox", "size": "auto"}').size == "auto"


def test_schema_and_checks_come_from_one_model():
    properties = VALIDATOR.json_schema()["properties"]
    assert properties["prompt"]["maxLength"] == 20 and properties["prompt"]["pattern"] == r"\S"
    assert properties["n"]["maximum"] == 2
    size = next(b for b in properties["size"]["anyOf"] if b.get("type") == "string")
    assert size["pattern"] == "^[0-9]{1,5}x[0-9]{1,5}$"
    guidance = next(b for b in properties["guidance_scale"]["anyOf"] if b.get("type") == "number")
    assert guidance["maximum"] == 10.0
    assert properties["prompt"]["description"] == "What to draw."  # descriptions kept from the base schema


def test_error_mapping():
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.serve.exceptions import BackPressureError

    from models.errors import InvalidRequestError

    assert to_api_error(InvalidRequestError("bad width", field="width")).param == "width"
    busy = to_api_error(BackPressureError(num_queued_requests=3, max_queued_requests=2))
    assert isinstance(busy, Overloaded) and busy.retry_after_s
    assert isinstance(to_api_error(RayTaskError("denoise", "tb", ActorDiedError())), StageFailed)
    assert to_api_error(KeyError("x")).status == 500
    response = error_response(Overloaded("busy", retry_after_s=2.4), "rid")
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert response.headers["x-request-id"] == "rid"
    assert json.loads(response.body) == {"error": {"message": "busy", "type": "overloaded_error", "param": None,
                                                   "code": None}}
