"""HTTP request and response schemas (OpenAI Images API shape plus Sana fields)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from models.registry import DEFAULT_GUIDANCE, DEFAULT_STEPS, SPRINT_STEPS

OutputFormat = Literal["png", "jpeg", "webp"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_progress: StrictBool = Field(
        False, description="Also send `sana.progress` events (queued, encoding, step k/N, decoding, done)."
    )


class ImageGenerationRequest(BaseModel):
    """`POST /v1/images/generations`. Unknown fields are refused, types are strict (no "5" for 5)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: StrictStr = Field(description="What to draw.")
    model: StrictStr | None = Field(None, description="A route id from GET /v1/models; default: the default route.")
    n: StrictInt = Field(1, description="Number of images.")
    size: StrictStr | None = Field(None, description='"WIDTHxHEIGHT", e.g. "1024x768"; default: the route\'s native size.')
    response_format: Literal["b64_json", "url"] = Field(
        "b64_json", description="b64_json: images inline; url: links to GET /v1/images/files/{id} (they expire)."
    )
    output_format: OutputFormat = Field("png", description="Image encoding.")
    negative_prompt: StrictStr = Field("", description="What not to draw (used when guidance_scale > 1).")
    seed: StrictInt | None = Field(None, description="Random seed; chosen by the server and returned when absent.")
    num_inference_steps: StrictInt | None = Field(
        None, description=f"Solver steps; default: the route's ({DEFAULT_STEPS}; SANA-Sprint routes {SPRINT_STEPS})."
    )
    guidance_scale: StrictFloat | None = Field(
        None, description=f"Guidance scale; default {DEFAULT_GUIDANCE}. Classifier-free (<= 1 turns it off), or on "
                          "SANA-Sprint routes an input of the model (no negative prompt)."
    )
    user: StrictStr | None = Field(None, description="OpenAI's end-user id; logged, otherwise unused.")
    stream: StrictBool = Field(
        False, description="Answer text/event-stream: partial images, then one completed event per image."
    )
    partial_images: StrictInt | None = Field(None, description="Previews to stream (0-3) before each image.")
    stream_options: StreamOptions | None = Field(None, description="Streaming extras (our progress events).")
    lora: StrictStr | None = Field(None, description="A LoRA adapter of the route (GET /v1/models lists them).")
    lora_scale: StrictFloat | None = Field(None, description="The adapter's weight; default 1.0; needs `lora`.")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str = Field(description="The prompt as generated, after the safety filter.")
    flagged: bool | None = Field(None, description="The image safety check's verdict (absent where it did not run). "
                                                   "Flagged images are placeholders unless the server only flags.")


class Timings(BaseModel):
    """Where the request's time went, in milliseconds. Also sent as a `Server-Timing` header."""

    queue: float = Field(description="Waiting: batching queues, transfers, scheduling (total minus the rest).")
    encode: float = Field(description="Text encoder compute (Gemma-2).")
    denoise: float = Field(description="Denoiser compute for the request's batch.")
    decode: float = Field(description="DC-AE decode, resize and quantize.")
    image_check: float = Field(0.0, description="The image safety check (0 on routes without it).")
    image_encode: float = Field(description="Watermark and PNG/JPEG/WebP encoding on the gateway.")
    total: float = Field(description="Gateway receive to response.")


class ImageGenerationResponse(BaseModel):
    created: int
    data: list[ImageData]
    model: str
    size: str = Field(description="WIDTHxHEIGHT of the returned images.")
    seed: int = Field(description="The seed used (the server's choice when the request had none).")
    output_format: OutputFormat
    timings_ms: Timings
    batch_size: int = Field(description="Images in the denoiser batch this request ran in.")
    nodes: dict[str, str] = Field(description="Host that ran each stage (encode, denoise, decode).")


class RouteLimits(BaseModel):
    """What a request to this route may ask for (the gateway's limits with the route's own)."""

    min_side: int
    max_side: int
    max_aspect_ratio: float
    max_images: int
    max_steps: int
    max_guidance_scale: float
    max_prompt_chars: int


class RouteDefaults(BaseModel):
    num_inference_steps: int
    guidance_scale: float


class LoraCard(BaseModel):
    id: str
    description: str = ""


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sana-serve"
    description: str = ""
    resolution: int = Field(description="The checkpoint's resolution class (its aspect-ratio bin table).")
    default_size: str
    default: bool
    sizes: list[str] = Field(description="One size per aspect-ratio bin the route serves, tallest to widest "
                                         "(bins larger than the route's max_side scaled down to it).")
    limits: RouteLimits
    defaults: RouteDefaults
    loras: list[LoraCard] = Field(default_factory=list, description="LoRA adapters a request may name with `lora`.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
