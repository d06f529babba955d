"""Application configuration: the `args` of the Serve application, declared as pydantic models.

Everything about routes, checkpoints, replicas, batching and limits lives in YAML
(`serve_config.yaml`, `deploy/local.yaml`). `AppConfig` is the app builder's typed argument: Ray
Serve validates the YAML `args` with it, and `parse_app_config` does the same for `sana-serve run`
and the tests, turning pydantic's errors into a `ConfigError` that names the YAML path
(`routes.sana-shapes.denoiser.batching.max_batch_size: ...`) before anything is deployed.

One model per concern; every field has a type, a range where one makes sense, and a docstring
that is also its description in the JSON schema (`AppConfig.model_json_schema()`).

Why one module over 400 lines: it is one declarative schema of one YAML document. The sections
refer to each other (routes' stages, the safety stages and the text encoder share `StageConfig`;
`AppConfig`'s validators check routes against gateway rules), and a reader looks up a key by
reading down the file in the order the YAML has it. Splitting it would scatter that lookup
without separating any logic.
"""

from __future__ import annotations

import inspect
import os
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MATERIALIZED_PREFIX = "materialized:"
DEFAULT_LOCAL_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "local.yaml"

_DEVICE = r"^(cpu|cuda(:[0-9]+)?)$"


class ConfigError(ValueError):
    """A configuration that cannot be served; the message names the offending key."""


class _Section(BaseModel):
    # Strict: YAML's "8" is not 8 and `true` is not 1; unknown keys are mistakes, not extensions.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)


@cache
def _deployment_options() -> frozenset[str]:
    from ray.serve.deployment import Deployment

    return frozenset(inspect.signature(Deployment.options).parameters) - {"self", "func_or_class", "_internal"}


def _known_deployment_options(value: dict[str, Any]) -> dict[str, Any]:
    # What `Deployment.options()` takes: a key it would reject at build time is refused at parse time.
    unknown = sorted(set(value) - _deployment_options())
    if unknown:
        raise ValueError(f"unknown Ray Serve deployment option(s) {', '.join(unknown)}")
    return value


DeploymentOptions = Annotated[dict[str, Any], AfterValidator(_known_deployment_options)]


class Batching(_Section):
    max_batch_size: int = Field(4, ge=1)
    """Most items one batch holds: prompts for the text encoder, images for the Denoiser."""
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    """How long a batch waits for more items before it runs."""


class StageConfig(_Section):
    """One stage deployment: Ray options (replicas, resources, autoscaling...) and batching."""

    deployment: DeploymentOptions = {}
    """Ray Serve deployment options, passed through: num_replicas, max_ongoing_requests,
    max_queued_requests, ray_actor_options, autoscaling_config..."""
    batching: Batching = Batching()
    """Dynamic batching of concurrent calls (applied when a replica starts)."""
    torch_threads: int | None = Field(None, ge=1)
    """torch intra-op threads in each replica. Ray caps fractional-CPU replicas at 1 thread; CPU
    float32 results are bit-identical only between runs with the same thread count."""


class TilingSettings(_Section):
    above: int = Field(2048, ge=1)
    """Outputs larger than this on a side decode in tiles."""
    tile: int = Field(1024, ge=32)
    """Tile side in pixels."""
    stride: int = Field(896, ge=32)
    """Distance between tile origins; tile - stride pixels are blended linearly."""

    @model_validator(mode="after")
    def _stride_within_tile(self) -> TilingSettings:
        if self.stride > self.tile:
            raise ValueError(f"stride ({self.stride}) must not exceed tile ({self.tile})")
        return self


class Placement(_Section):
    """Where a route's Denoiser and Decoder may run, merged into both stages' ray_actor_options.
    A node advertises `large_memory: 1`; replicas ask for a sliver ({large_memory: 0.01}) so that
    one node can host both stages and several replicas."""

    resources: dict[str, float] = {}
    """Custom resources each replica asks for (positive amounts)."""
    label_selector: dict[str, str] = {}
    """Node labels a replica's node must carry."""

    @field_validator("resources")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(amount <= 0 for amount in value.values()):
            raise ValueError("amounts must be positive numbers")
        return value


class LoraEntry(_Section):
    """One LoRA adapter a route offers (requests name it with `lora`)."""

    source: str = Field(min_length=1)
    """A folder holding pytorch_lora_weights.safetensors, a Hugging Face repo id, or materialized:NAME."""
    description: str = ""


class Route(_Section):
    """One (Denoiser, Decoder) pair serving one checkpoint."""

    checkpoint: str = Field(min_length=1)
    """A folder, a Hugging Face repo id, or materialized:ARCH."""
    denoiser: StageConfig = StageConfig()
    decoder: StageConfig = StageConfig()
    tiling: TilingSettings = TilingSettings()
    device: str | None = Field(None, pattern=_DEVICE)
    """cpu, cuda or cuda:N; default: cuda when present."""
    description: str = ""
    max_images: int | None = Field(None, ge=1)
    """Per-request n limit on this route; default: gateway.limits.max_images."""
    max_side: int | None = Field(None, ge=1)
    """Largest side this route serves; default: gateway.limits.max_side."""
    placement: Placement = Placement()
    max_queue_wait_s: float | None = Field(None, gt=0)
    """This route's queue-wait budget; default: gateway.admission.max_queue_wait_s."""
    capacity_wait_s: float | None = Field(None, ge=0)
    """How long a request may wait for this route to have capacity (a replica placed and a free
    slot) before it gets 503 + Retry-After. None: wait as long as the stage queues allow."""
    loras: dict[str, LoraEntry] = {}
    """LoRA adapters by id. A Denoiser replica loads one on first use (Ray Serve model multiplexing:
    requests for an adapter go to replicas that hold it) and keeps up to max_loras_per_replica."""
    max_loras_per_replica: int = Field(4, ge=1)
    image_check: bool = True
    """Run the image safety check (when safety.image_checker is enabled) on this route's images."""

    def deployment(self, stage: StageConfig) -> dict[str, Any]:
        """`stage`'s deployment options with this route's placement merged into ray_actor_options."""
        deployment = dict(stage.deployment)
        options = dict(deployment.get("ray_actor_options") or {})
        if self.placement.resources:
            options["resources"] = {**(options.get("resources") or {}), **self.placement.resources}
        if self.placement.label_selector:
            options["label_selector"] = {**(options.get("label_selector") or {}), **self.placement.label_selector}
        if options:
            deployment["ray_actor_options"] = options
        return deployment


class Limits(_Section):
    """What one request may ask for; the request schema published at /openapi.json comes from here."""

    max_prompt_chars: int = Field(2000, ge=1)
    max_images: int = Field(4, ge=1)
    """n per request (a route may lower it)."""
    min_side: int = Field(64, ge=1)
    max_side: int = Field(4096, ge=1)
    max_aspect_ratio: float = Field(4.0, ge=1)
    max_steps: int = Field(50, ge=1)
    max_guidance: float = Field(20.0, ge=0)
    max_body_bytes: int = Field(65536, ge=256)

    @model_validator(mode="after")
    def _sides_in_order(self) -> Limits:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) is above max_side ({self.max_side})")
        return self


class SizeRoute(_Section):
    above: int = Field(ge=1)
    """Requests whose larger side is above this many pixels..."""
    route: str
    """...go to this route (largest matching `above` wins)."""


class AdmissionConfig(_Section):
    """Load shedding from live figures: a route's work in flight and its measured throughput."""

    max_queue_wait_s: float | None = Field(30.0, gt=0)
    """A request whose estimated queue wait (work ahead / throughput) is above this is refused with
    503 (and an admitted one still queued well past it is dropped, see drop_after). A route's own
    `max_queue_wait_s` overrides it. None: no estimate-based shedding."""
    drop_after: float = Field(1.0, ge=1.0)
    """An admitted request whose denoising has not started after drop_after × the budget is dropped
    with 503 (the estimate was wrong: a replica lost, a slower mix). 1: an admitted request's
    latency stays within the budget plus its own service time; above 1 trades that bound for fewer
    requests dropped after waiting near the budget."""
    cold_start_images: int = Field(32, ge=1)
    """Images in flight on a route before its throughput is measured (the first completions)."""
    window: int = Field(32, ge=2)
    """Completions the throughput is measured over (the newest)."""
    min_samples: int = Field(3, ge=2)
    """Completions needed before the estimate is trusted (until then: cold_start_images)."""
    max_inflight: int = Field(0, ge=0)
    """Hard cap: generations in flight per gateway replica, all routes (0: no cap)."""
    drain_retry_after_s: float = Field(5.0, gt=0)
    """Retry-After of the 503 that new requests get while a replica drains (shutting down)."""
    drain_grace_s: float = Field(60.0, ge=0)
    """On SIGTERM, how long `sana-serve run` lets in-flight requests finish before it stops."""

    @model_validator(mode="after")
    def _samples_fit_window(self) -> AdmissionConfig:
        if self.min_samples > self.window:
            raise ValueError(f"min_samples ({self.min_samples}) must not exceed window ({self.window})")
        return self


class WatermarkConfig(_Section):
    """An invisible watermark (invisible-watermark's DWT-DCT-SVD) with a short payload, embedded in
    every generated image of 256 px a side or more, after the image check, before encoding."""

    enabled: bool = False
    payload: str = Field("sana-gen", min_length=1, max_length=16)
    """What the watermark says (UTF-8, at most 16 bytes; shorter reads back more reliably)."""

    @field_validator("payload")
    @classmethod
    def _fits(cls, value: str) -> str:
        if len(value.encode("utf-8")) > 16:
            raise ValueError("at most 16 bytes in UTF-8")
        return value


class C2paConfig(_Section):
    """C2PA Content Credentials: every returned file gets a manifest signed with this certificate."""

    certificate_chain_file: str = Field(min_length=1)
    """PEM file: the signing certificate first, then its intermediates (not the root)."""
    private_key_file: str = Field(min_length=1)
    """PEM file with the signing certificate's private key (mount it from a secret)."""
    algorithm: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = "es256"
    """The key's signature algorithm."""
    timestamp_url: str | None = Field(None, pattern=r"^https?://[^\s]+$")
    """An RFC 3161 time-stamp authority, so signatures outlive the certificate; none: untimestamped."""


class GatewayConfig(_Section):
    deployment: DeploymentOptions = {}
    """Ray Serve options of the Gateway deployment."""
    limits: Limits = Limits()
    stage_retries: int = Field(1, ge=0, le=5)
    """Extra attempts when a stage replica died mid-call (stage calls are pure)."""
    image_encode_threads: int = Field(4, ge=1)
    """Threads that PNG/JPEG/WebP-encode results, off the event loop."""
    admission: AdmissionConfig = AdmissionConfig()
    """Which requests a gateway replica takes on (see serve/gate/admission.py); the rest get 503 +
    Retry-After at once, before any stage work."""
    max_request_timeout_s: float = Field(600.0, gt=0)
    """Largest `X-Request-Timeout` a client may set (seconds); past its own timeout a request's
    work is cancelled and it is answered 504."""
    size_routes: list[SizeRoute] = []
    """Requests without `model` whose larger side is above `above` go to `route`; the rest go to
    the default route."""
    web_page: bool = True
    """Serve the web page (prompt to picture, with progress and cancel) at GET /. It is a static
    shell: everything it shows comes from API calls that carry the user's key."""
    preview_max_side: int = Field(512, ge=32, le=4096)
    """Longer side, in pixels, of streamed previews (partial images); decoded from downsampled latents."""
    watermark: WatermarkConfig = WatermarkConfig()
    """The invisible watermark embedded in every generated image (`sana-serve verify-watermark` reads it)."""
    c2pa: C2paConfig | None = None
    """Sign a C2PA manifest into every returned file (needs `pip install 'sana-serve[c2pa]'`); none: unsigned."""
    provenance_parameters: bool = True
    """Write the generation parameters (prompt as generated, negative prompt, seed, steps, guidance,
    size, model) into every returned file, as A1111's `parameters`. Off for privacy; the
    machine-readable AI-generated marking is written either way."""


class FilesConfig(_Section):
    """Results by URL (`response_format: url`, job results): files served at /v1/images/files/{id}."""

    directory: str | None = None
    """Where files are kept: a volume every gateway replica mounts (a shared one on a cluster);
    default: the `files` folder under $SANA_SERVE_CACHE."""
    ttl_s: float = Field(3600.0, gt=0)
    """A file is served for this long after it was written, then removed."""
    max_bytes: int = Field(2 * 1024**3, ge=1024)
    """Bytes the folder may hold; past it the oldest files go first."""
    url_base: str | None = Field(None, pattern=r"^https?://[^\s]+[^/]$")
    """Prefix of file URLs (e.g. https://images.example.com); default: the scheme and host the
    request came in on."""


class WebhookConfig(_Section):
    """Signed POSTs to a job's `webhook.url` (Standard Webhooks headers)."""

    allowed_hosts: list[str] = []
    """Hosts (or host:port) a webhook may be sent to; a job naming any other is refused with 400.
    Empty: webhooks are refused. The cluster never calls addresses a client chose freely."""
    secret_env: str = Field("SANA_SERVE_WEBHOOK_SECRET", min_length=1)
    """Environment variable with the HMAC-SHA256 signing secret (required to send webhooks)."""
    max_attempts: int = Field(5, ge=1, le=20)
    """Tries per delivery; non-2xx answers and connection errors are retried."""
    backoff_s: float = Field(1.0, ge=0)
    """Wait before the second try; doubled each time after."""
    timeout_s: float = Field(10.0, gt=0)
    """Per-attempt timeout."""


class JobsConfig(_Section):
    """Async jobs: POST /v1/images/jobs and friends, kept in one JobStore deployment."""

    ttl_s: float = Field(3600.0, gt=0)
    """A finished job (and its events) is kept this long, then answers 404 "expired"."""
    max_jobs: int = Field(10000, ge=1)
    """Job records kept at most; past it the oldest finished ones expire first, and when all are
    unfinished a new job is refused with 503."""
    max_events: int = Field(2000, ge=10)
    """Events kept per job for replay (a job's progress is ~steps + 10 events)."""
    runners_per_gateway: int = Field(4, ge=1)
    """Jobs one gateway replica runs at once; the rest wait in the store's queue."""
    lease_s: float = Field(30.0, gt=0)
    """A running job whose gateway replica has not reported for this long is requeued (the
    replica is presumed lost) and run again by another one, with the same seed."""
    max_attempts: int = Field(2, ge=1)
    """Runs per job before it fails for good."""
    webhooks: WebhookConfig = WebhookConfig()
    store: DeploymentOptions = {}
    """Ray Serve options of the JobStore deployment (it must have exactly one replica)."""


class WordFilterConfig(_Section):
    enabled: bool = True
    use_default_list: bool = True
    """The list shipped in serve/gate/blocklists/default.txt."""
    extra_words: list[str] = []
    extra_files: list[str] = []


class ClassifierConfig(StageConfig):
    """ShieldGemma: a prompt scoring above `threshold` is replaced by `replacement`."""

    enabled: bool = False
    checkpoint: str = Field("google/shieldgemma-2b", min_length=1)
    threshold: float = Field(0.2, ge=0, le=1)
    replacement: str = Field("A red heart.", min_length=1)
    device: str | None = Field(None, pattern=_DEVICE)


class ImageCheckerConfig(StageConfig):
    """The image safety check: every image of a route with `image_check` (the default) is scored by
    an image classifier after decoding, before encoding; above `threshold` it is flagged."""

    enabled: bool = False
    checkpoint: str = Field("Falconsai/nsfw_image_detection", min_length=1)
    """An image-classification model (folder, Hub repo id, or materialized:tiny-image-checker)."""
    unsafe_labels: list[str] = Field(["nsfw"], min_length=1)
    """The classifier's labels whose probabilities add up to the score."""
    threshold: float = Field(0.5, ge=0, le=1)
    """Images scoring above this are flagged."""
    action: Literal["replace", "flag"] = "replace"
    """replace: a flagged image becomes a plain placeholder of the same size and format (and carries
    no generation parameters); flag: it is returned as generated. Either way its `flagged` is true."""
    placeholder_rgb: list[int] = Field([128, 128, 128], min_length=3, max_length=3)
    """The placeholder's colour (red, green, blue in [0, 255])."""
    on_error: Literal["closed", "open"] = "closed"
    """When the check itself fails: closed answers 503 (no unchecked image leaves); open returns the
    images without `flagged`. Both are logged and counted."""
    device: str | None = Field(None, pattern=_DEVICE)

    @field_validator("placeholder_rgb")
    @classmethod
    def _channels(cls, value: list[int]) -> list[int]:
        if not all(0 <= channel <= 255 for channel in value):
            raise ValueError("channels must be in [0, 255]")
        return value


class SafetyConfig(_Section):
    word_filter: WordFilterConfig = WordFilterConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    image_checker: ImageCheckerConfig = ImageCheckerConfig()


class AuthConfig(_Section):
    """Optional API keys. Keys are given only as SHA-256 hex digests, in config or an env variable."""

    enabled: bool = False
    key_hashes: list[str] = []
    """SHA-256 hex digests of the accepted keys (never the keys)."""
    key_hashes_env: str = "SANA_SERVE_API_KEY_HASHES"
    """Environment variable with more comma-separated digests, read at replica start."""
    requests_per_minute: float = Field(0.0, ge=0)
    """Per key and gateway replica; 0 = unlimited."""
    burst: int = Field(10, ge=1)

    @field_validator("key_hashes")
    @classmethod
    def _digests(cls, value: list[str]) -> list[str]:
        if not all(len(d) == 64 and all(c in "0123456789abcdefABCDEF" for c in d) for d in value):
            raise ValueError("must hold SHA-256 hex digests (64 hex characters), not keys")
        return [d.lower() for d in value]


class TextEncoderConfig(StageConfig):
    checkpoint: str = Field(min_length=1)
    """Default: the default route's checkpoint."""
    cache_size: int = Field(1024, ge=0)
    """Prompt embeddings kept in each replica's LRU cache (0: no cache)."""
    device: str | None = Field(None, pattern=_DEVICE)


class AppConfig(_Section):
    """The application's `args`: one shared text encoder, routes, the gateway, safety and auth."""

    text_encoder: TextEncoderConfig
    routes: dict[str, Route] = Field(min_length=1)
    """Route id (the API's `model`) → its checkpoint and stages."""
    default_route: str
    """Where requests without `model` go; default: the first route."""
    gateway: GatewayConfig = GatewayConfig()
    safety: SafetyConfig = SafetyConfig()
    auth: AuthConfig = AuthConfig()
    jobs: JobsConfig = JobsConfig()
    files: FilesConfig = FilesConfig()

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        # Defaults that come from other fields: the first route, and its checkpoint for the encoder.
        if not isinstance(data, dict) or not isinstance(data.get("routes"), dict) or not data["routes"]:
            return data
        data = dict(data)
        data.setdefault("default_route", next(iter(data["routes"])))
        route = data["routes"].get(data["default_route"])
        encoder = data.get("text_encoder") or {}
        if isinstance(encoder, dict) and "checkpoint" not in encoder and isinstance(route, dict):
            data["text_encoder"] = {**encoder, "checkpoint": route.get("checkpoint")}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> AppConfig:
        if self.default_route not in self.routes:
            raise ValueError(f"default_route {self.default_route!r} is not one of the routes ({', '.join(self.routes)})")
        for index, rule in enumerate(self.gateway.size_routes):
            if rule.route not in self.routes:
                raise ValueError(f"gateway.size_routes[{index}].route {rule.route!r} is not one of the routes")
        if self.jobs.store.get("num_replicas", 1) != 1 or "autoscaling_config" in self.jobs.store:
            raise ValueError("jobs.store: the JobStore keeps state in memory and must have num_replicas: 1")
        checker = self.safety.image_checker
        most_images = max(self.max_images(name) for name in self.routes)
        if checker.enabled and checker.batching.max_batch_size < most_images:
            raise ValueError(f"safety.image_checker.batching.max_batch_size ({checker.batching.max_batch_size}) is "
                             f"below the {most_images} images one request may ask for")
        for name, route in self.routes.items():
            batch, n = route.denoiser.batching.max_batch_size, self.max_images(name)
            if batch < n:
                # Denoiser batches count images: one request of n images must fit in one batch.
                raise ValueError(f"routes.{name}.denoiser.batching.max_batch_size ({batch}) is below the {n} images"
                                 " one request may ask for")
        return self

    def max_side(self, route: str) -> int:
        limit = self.routes[route].max_side
        return self.gateway.limits.max_side if limit is None else min(limit, self.gateway.limits.max_side)

    def queue_budgets(self) -> dict[str, float | None]:
        """Each route's queue-wait budget (its own, else the gateway's)."""
        default = self.gateway.admission.max_queue_wait_s
        return {name: default if route.max_queue_wait_s is None else route.max_queue_wait_s
                for name, route in self.routes.items()}

    def max_images(self, route: str) -> int:
        limit = self.routes[route].max_images
        return self.gateway.limits.max_images if limit is None else limit

    def route_for_size(self, width: int, height: int) -> str:
        """The route a request without `model` goes to."""
        matches = [rule for rule in self.gateway.size_routes if max(width, height) > rule.above]
        return max(matches, key=lambda rule: rule.above).route if matches else self.default_route

    def custom_resources(self) -> dict[str, float]:
        """Custom resources a single node must advertise to host every route: each one named in
        a placement, as the usual node marker (1 unit; replicas ask for slivers of it)."""
        return {name: 1.0 for route in self.routes.values() for name in route.placement.resources}

    def with_default_checkpoint(self, checkpoint: str) -> AppConfig:
        """The same config with the default route (and the shared text encoder) on `checkpoint`."""
        route = self.routes[self.default_route].model_copy(update={"checkpoint": checkpoint})
        return self.model_copy(update={
            "routes": {**self.routes, self.default_route: route},
            "text_encoder": self.text_encoder.model_copy(update={"checkpoint": checkpoint}),
        })


def parse_app_config(args: Any) -> AppConfig:
    """The application's `args` mapping as an AppConfig; ConfigError naming each bad key."""
    if args is None:
        args = {}
    try:
        return AppConfig.model_validate(args)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(error) for error in exc.errors())) from None


def _describe(error: dict[str, Any]) -> str:
    path = ""
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] not in ("value_error", "missing") and "input" in error:
        message += f", got {error['input']!r}"
    return f"{path}: {message}" if path else message


def load_serve_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A Serve config file (the `serve run`/`serve deploy` format) as a mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("applications"), list) or not data["applications"]:
        raise ConfigError(f"config {path}: expected a Serve config with an 'applications' list")
    return data


def files_dir(config: FilesConfig) -> Path:
    return Path(config.directory) if config.directory else cache_dir() / "files"


def cache_dir() -> Path:
    """Where materialized checkpoints are kept between starts (SANA_SERVE_CACHE)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sana-serve"
    return Path(os.environ.get("SANA_SERVE_CACHE", default))
