"""Request validation, written once: the configured limits become one pydantic model.

`RequestValidator` derives, from the base `ImageGenerationRequest` schema and the deployment's
`Limits`, a model whose constraints are those limits. Validating a body and publishing the
request's JSON schema (at /openapi.json) both use that model, so what clients are told and what
the server checks cannot drift apart. Checks that depend on the route (its `max_side`, its
`max_images`) happen in the generation service, once the route is known.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import (
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)

from models.pipeline import MAX_SEED
from serve.config import Limits
from serve.errors import BadRequest, PayloadTooLarge
from serve.schemas import ImageGenerationRequest

SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
SIZE_PATTERN = r"^[0-9]{1,5}x[0-9]{1,5}$"
NATIVE_SIZE = "auto"  # OpenAI's spelling of "the model's own size"
MAX_PARTIAL_IMAGES = 3  # OpenAI's bound
MAX_LORA_SCALE = 4.0  # either sign: "slider" adapters are used negated


def parse_size(size: str) -> tuple[int, int]:
    """(width, height) of a "WIDTHxHEIGHT" string the validator has accepted."""
    match = SIZE.match(size)
    if not match:
        raise BadRequest(f'size must look like "1024x768" (WIDTHxHEIGHT), got {size!r}', "size")
    return int(match[1]), int(match[2])


def limited_request_model(limits: Limits, max_images: int) -> type[ImageGenerationRequest]:
    """ImageGenerationRequest with `limits` (and the largest `n` any route takes) as constraints."""
    base = ImageGenerationRequest.model_fields

    def field(name: str, annotation: Any, **constraints: Any) -> tuple[Any, Any]:
        return annotation, Field(base[name].default, description=base[name].description, **constraints)

    def check_prompt(value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    def check_size(value: str | None) -> str | None:
        if value is None or value == NATIVE_SIZE:
            return value
        match = SIZE.match(value)
        if not match:
            raise ValueError(f'must look like "1024x768" (WIDTHxHEIGHT), got {value!r}')
        width, height = int(match[1]), int(match[2])
        if not all(limits.min_side <= side <= limits.max_side for side in (width, height)):
            raise ValueError(f"each side must be in [{limits.min_side}, {limits.max_side}]")
        if max(width, height) / min(width, height) > limits.max_aspect_ratio:
            raise ValueError(f"aspect ratio above {limits.max_aspect_ratio}:1")
        return value

    def check_lora_scale(value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("lora") is None:
            raise ValueError("given without lora (the adapter it scales)")
        return value

    text = limits.max_prompt_chars
    return create_model(
        "ImageGenerationRequest",
        __base__=ImageGenerationRequest,
        __validators__={
            "prompt_not_blank": field_validator("prompt")(check_prompt),
            "size_within_limits": field_validator("size")(check_size),
            "lora_scale_needs_lora": field_validator("lora_scale")(check_lora_scale),
        },
        # Patterns that the validators above enforce with clearer messages are published as schema only.
        prompt=field("prompt", StrictStr, min_length=1, max_length=text, json_schema_extra={"pattern": r"\S"}),
        negative_prompt=field("negative_prompt", StrictStr, max_length=text),
        n=field("n", StrictInt, ge=1, le=max_images),
        size=field("size", Annotated[StrictStr, Field(json_schema_extra={"pattern": SIZE_PATTERN})] | None),
        num_inference_steps=field("num_inference_steps", Annotated[StrictInt, Field(ge=1, le=limits.max_steps)] | None),
        guidance_scale=field("guidance_scale", Annotated[StrictFloat, Field(ge=0, le=limits.max_guidance)] | None),
        seed=field("seed", Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] | None),
        partial_images=field("partial_images", Annotated[StrictInt, Field(ge=0, le=MAX_PARTIAL_IMAGES)] | None),
        lora=field("lora", Annotated[StrictStr, Field(min_length=1, max_length=200)] | None),
        lora_scale=field("lora_scale", Annotated[StrictFloat, Field(ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE)] | None),
    )


class RequestValidator:
    """Turns a request body into a validated ImageGenerationRequest, or a BadRequest naming the field."""

    def __init__(self, limits: Limits, max_images: int) -> None:
        self.limits = limits
        self.model = limited_request_model(limits, max_images)

    def json_schema(self) -> dict[str, Any]:
        return self.model.model_json_schema()

    def parse(self, raw: bytes) -> ImageGenerationRequest:
        return self.validate(self.decode(raw))

    def decode(self, raw: bytes) -> dict[str, Any]:
        """The body as a JSON object, within the size limit (for callers that take fields off it
        before validating, like a job's `webhook`)."""
        if len(raw) > self.limits.max_body_bytes:
            raise PayloadTooLarge(f"request body is larger than {self.limits.max_body_bytes} bytes")
        return decode_json_object(raw)

    def validate(self, data: dict[str, Any]) -> ImageGenerationRequest:
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            raise _bad_request(exc) from None


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes; strict JSON (no NaN/Infinity), bounded nesting."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    _refuse_unpaired_surrogates(data)
    return data


UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_unpaired_surrogates(data: dict[str, Any]) -> None:
    """JSON's `\\ud800` escapes decode to lone surrogates, which are not Unicode: the tokenizer,
    the logs and UTF-8 all fail on them later. Refused here, naming the top-level field."""
    stack: list[tuple[str | None, Any]] = [(None, data)]
    while stack:
        field, value = stack.pop()
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, dict):
            texts = list(value)
            stack.extend((field if field is not None else str(key), item) for key, item in value.items())
        elif isinstance(value, list):
            texts = []
            stack.extend((field, item) for item in value)
        else:
            continue
        if any(UNPAIRED_SURROGATE.search(text) for text in texts):
            name = field if field is not None and not UNPAIRED_SURROGATE.search(field) else None
            where = f"{name}: " if name else ""
            raise BadRequest(f"{where}contains an unpaired UTF-16 surrogate escape (like \\ud800), which is not "
                             "valid Unicode", name)


def _reject_constant(name: str) -> float:
    # json.loads accepts NaN and Infinity by default; JSON does not.
    raise ValueError(f"{name} is not valid JSON")


def _bad_request(exc: ValidationError) -> BadRequest:
    first = exc.errors()[0]
    loc = first.get("loc", ())
    field = str(loc[0]) if loc else None  # the request's own field; deeper parts are type internals
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    return BadRequest(f"{field}: {message}" if field else message, field)
