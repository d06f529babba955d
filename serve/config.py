"""Application configuration: the `args` of the Serve application, parsed and checked once.

Everything about routes, checkpoints, replicas, batching and limits lives in YAML
(`serve_config.yaml`, `deploy/local.yaml`); this module turns it into typed objects and refuses
bad configs with a message naming the key, before anything is deployed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MATERIALIZED_PREFIX = "materialized:"
DEFAULT_LOCAL_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "local.yaml"


class ConfigError(ValueError):
    """A configuration that cannot be served; the message names the offending key."""


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 4
    batch_wait_timeout_s: float = 0.01


@dataclass(frozen=True)
class StageConfig:
    """One stage deployment: Ray options (replicas, resources, autoscaling...) and batching."""

    deployment: dict[str, Any] = field(default_factory=dict)
    batching: Batching = Batching()
    # torch intra-op threads in each replica. Ray caps fractional-CPU replicas at 1 thread; CPU
    # float32 results are bit-identical only between runs with the same thread count.
    torch_threads: int | None = None


@dataclass(frozen=True)
class TilingSettings:
    above: int = 2048
    tile: int = 1024
    stride: int = 896


@dataclass(frozen=True)
class Route:
    """One (Denoiser, Decoder) pair serving one checkpoint."""

    name: str
    checkpoint: str
    denoiser: StageConfig
    decoder: StageConfig
    tiling: TilingSettings
    device: str | None = None
    description: str = ""
    max_images: int | None = None  # per-request n limit on this route; default: gateway.limits.max_images
    max_side: int | None = None  # largest side this route serves; default: gateway.limits.max_side
    # Where its Denoiser and Decoder may run: custom resources and/or node labels, merged into both
    # stages' ray_actor_options. A node advertises `large_memory: 1`; replicas ask for a sliver
    # ({large_memory: 0.01}) so that one node can host both stages and several replicas.
    placement: dict[str, Any] = field(default_factory=dict)
    # How long a request may wait for this route to have capacity (a replica placed and a free slot)
    # before it gets 503 + Retry-After. None: wait as long as the stage queues allow.
    capacity_wait_s: float | None = None


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = 2000
    max_images: int = 4
    min_side: int = 64
    max_side: int = 4096
    max_aspect_ratio: float = 4.0
    max_steps: int = 50
    max_guidance: float = 20.0
    max_body_bytes: int = 65536


@dataclass(frozen=True)
class GatewayConfig:
    deployment: dict[str, Any] = field(default_factory=dict)
    limits: Limits = Limits()
    stage_retries: int = 1  # extra attempts when a stage replica died mid-call
    image_encode_threads: int = 4
    # Generations in flight per gateway replica before new ones get 503 + Retry-After (0: no cap).
    # Stage queues (max_queued_requests) shed load too; this cap answers before any stage work.
    max_inflight: int = 0
    # Requests without `model` whose larger side is above `above` go to `route` (largest match
    # wins); the rest go to the default route.
    size_routes: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class WordFilterConfig:
    enabled: bool = True
    use_default_list: bool = True  # the list shipped in serve/blocklists/default.txt
    extra_words: tuple[str, ...] = ()
    extra_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassifierConfig:
    """ShieldGemma: a prompt scoring above `threshold` is replaced by `replacement`."""

    enabled: bool = False
    checkpoint: str = "google/shieldgemma-2b"
    threshold: float = 0.2
    replacement: str = "A red heart."
    device: str | None = None
    stage: StageConfig = StageConfig()


@dataclass(frozen=True)
class SafetyConfig:
    word_filter: WordFilterConfig = WordFilterConfig()
    classifier: ClassifierConfig = ClassifierConfig()


@dataclass(frozen=True)
class AuthConfig:
    """Optional API keys. Keys are given only as SHA-256 hex digests, in config or an env variable."""

    enabled: bool = False
    key_hashes: tuple[str, ...] = ()
    key_hashes_env: str = "SANA_SERVE_API_KEY_HASHES"  # comma-separated digests, read at replica start
    requests_per_minute: float = 0.0  # per key and gateway replica; 0 = unlimited
    burst: int = 10


@dataclass(frozen=True)
class TextEncoderConfig:
    checkpoint: str
    stage: StageConfig
    cache_size: int = 1024
    device: str | None = None


@dataclass(frozen=True)
class AppConfig:
    text_encoder: TextEncoderConfig
    routes: dict[str, Route]
    default_route: str
    gateway: GatewayConfig
    safety: SafetyConfig = SafetyConfig()
    auth: AuthConfig = AuthConfig()

    def max_side(self, route: str) -> int:
        limit = self.routes[route].max_side
        return self.gateway.limits.max_side if limit is None else min(limit, self.gateway.limits.max_side)

    def route_for_size(self, width: int, height: int) -> str:
        """The route a request without `model` goes to."""
        chosen = self.default_route
        for above, route in self.gateway.size_routes:
            if max(width, height) > above:
                chosen = route
        return chosen

    def custom_resources(self) -> dict[str, float]:
        """Custom resources a single node must advertise to host every route: each one named in
        a placement, as the usual node marker (1 unit; replicas ask for slivers of it)."""
        return {name: 1.0 for route in self.routes.values() for name in route.placement.get("resources", {})}

    def max_images(self, route: str) -> int:
        limit = self.routes[route].max_images
        return self.gateway.limits.max_images if limit is None else limit

    def with_default_checkpoint(self, checkpoint: str) -> "AppConfig":
        """The same config with the default route (and the shared text encoder) on `checkpoint`."""
        route = self.routes[self.default_route]
        routes = {**self.routes, route.name: _replace(route, checkpoint=checkpoint)}
        return _replace(self, routes=routes, text_encoder=_replace(self.text_encoder, checkpoint=checkpoint))


def _replace(obj, **changes):
    from dataclasses import replace

    return replace(obj, **changes)


def _section(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping")
    return raw


def _typed(cls, raw: Any, where: str):
    values = _section(raw, where)
    known = set(cls.__dataclass_fields__)
    _only(values, known, where)
    defaults = cls()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ConfigError(f"{where}.{key} must be {expected.__name__}, got {value!r}")
        if isinstance(value, (int, float)) and value < 0:
            raise ConfigError(f"{where}.{key} must not be negative")
    return cls(**{**defaults.__dict__, **values})


_STAGE_KEYS = {"deployment", "batching", "torch_threads"}


def _stage(raw: Any, where: str) -> StageConfig:
    values = _section(raw, where)
    _only(values, _STAGE_KEYS, where)
    batching = _typed(Batching, values.get("batching"), f"{where}.batching")
    if batching.max_batch_size < 1:
        raise ConfigError(f"{where}.batching.max_batch_size must be at least 1")
    threads = values.get("torch_threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"{where}.torch_threads must be a positive integer")
    return StageConfig(
        deployment=dict(_section(values.get("deployment"), f"{where}.deployment")),
        batching=batching,
        torch_threads=threads,
    )


def _checkpoint(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{where}.checkpoint must be a folder, a Hub repo id or materialized:ARCH")
    return raw


def _route(name: str, raw: Any) -> Route:
    where = f"routes.{name}"
    values = _section(raw, where)
    _only(values, {"checkpoint", "denoiser", "decoder", "tiling", "device", "description", "max_images", "max_side",
                   "placement", "capacity_wait_s"}, where)
    placement = _placement(values.get("placement"), f"{where}.placement")
    max_side = values.get("max_side")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ConfigError(f"{where}.max_side must be a positive integer")
    wait = values.get("capacity_wait_s")
    return Route(
        name=name,
        checkpoint=_checkpoint(values.get("checkpoint"), where),
        denoiser=_placed(_stage(values.get("denoiser"), f"{where}.denoiser"), placement),
        decoder=_placed(_stage(values.get("decoder"), f"{where}.decoder"), placement),
        tiling=_typed(TilingSettings, values.get("tiling"), f"{where}.tiling"),
        device=values.get("device"),
        description=str(values.get("description", "")),
        max_images=values.get("max_images"),
        max_side=max_side,
        placement=placement,
        capacity_wait_s=None if wait is None else _number(wait, 0.0, f"{where}.capacity_wait_s"),
    )


def _placement(raw: Any, where: str) -> dict[str, Any]:
    values = _section(raw, where)
    _only(values, {"resources", "label_selector"}, where)
    for key in values:
        section = _section(values[key], f"{where}.{key}")
        if key == "resources" and not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in section.values()
        ):
            raise ConfigError(f"{where}.resources: amounts must be positive numbers")
        if key == "label_selector" and not all(isinstance(v, str) for v in section.values()):
            raise ConfigError(f"{where}.label_selector: values must be strings")
    return {key: dict(values[key]) for key in values}


def _placed(stage: StageConfig, placement: dict[str, Any]) -> StageConfig:
    """The stage with the route's placement merged into its ray_actor_options."""
    if not placement:
        return stage
    deployment = dict(stage.deployment)
    options = dict(deployment.get("ray_actor_options") or {})
    if "resources" in placement:
        options["resources"] = {**(options.get("resources") or {}), **placement["resources"]}
    if "label_selector" in placement:
        options["label_selector"] = {**(options.get("label_selector") or {}), **placement["label_selector"]}
    deployment["ray_actor_options"] = options
    return _replace(stage, deployment=deployment)


def parse_app_config(args: dict[str, Any]) -> AppConfig:
    """Parse the application's `args` mapping."""
    args = _section(args, "args")
    _only(args, {"text_encoder", "routes", "default_route", "gateway", "safety", "auth"}, "args")
    routes_raw = _section(args.get("routes"), "routes")
    if not routes_raw:
        raise ConfigError("routes: at least one route is required")
    routes = {str(name): _route(str(name), raw) for name, raw in routes_raw.items()}
    default_route = args.get("default_route", next(iter(routes)))
    if default_route not in routes:
        raise ConfigError(f"default_route {default_route!r} is not one of the routes ({', '.join(routes)})")
    enc = _section(args.get("text_encoder"), "text_encoder")
    _only(enc, _STAGE_KEYS | {"checkpoint", "cache_size", "device"}, "text_encoder")
    text_encoder = TextEncoderConfig(
        checkpoint=_checkpoint(enc.get("checkpoint", routes[default_route].checkpoint), "text_encoder"),
        stage=_stage({k: enc[k] for k in _STAGE_KEYS if k in enc}, "text_encoder"),
        cache_size=int(enc.get("cache_size", 1024)),
        device=enc.get("device"),
    )
    gw = _section(args.get("gateway"), "gateway")
    _only(gw, {"deployment", "limits", "stage_retries", "image_encode_threads", "max_inflight", "size_routes"},
          "gateway")
    gateway = GatewayConfig(
        deployment=dict(_section(gw.get("deployment"), "gateway.deployment")),
        limits=_typed(Limits, gw.get("limits"), "gateway.limits"),
        stage_retries=int(_number(gw.get("stage_retries"), 1, "gateway.stage_retries", 0, 5)),
        image_encode_threads=int(_number(gw.get("image_encode_threads"), 4, "gateway.image_encode_threads", 1)),
        max_inflight=int(_number(gw.get("max_inflight"), 0, "gateway.max_inflight")),
        size_routes=_size_routes(gw.get("size_routes"), routes),
    )
    config = AppConfig(
        text_encoder=text_encoder,
        routes=routes,
        default_route=default_route,
        gateway=gateway,
        safety=_safety(args.get("safety")),
        auth=_auth(args.get("auth")),
    )
    for route in routes.values():
        n = config.max_images(route.name)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"routes.{route.name}.max_images must be a positive integer")
        if route.denoiser.batching.max_batch_size < n:
            # Denoiser batches count images: one request of n images must fit in one batch.
            raise ConfigError(
                f"routes.{route.name}.denoiser.batching.max_batch_size ({route.denoiser.batching.max_batch_size})"
                f" is below the {n} images one request may ask for"
            )
    return config


def _strings(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ConfigError(f"{where} must be a list of strings")
    return tuple(raw)


def _flag(raw: Any, default: bool, where: str) -> bool:
    if raw is None:
        return default
    if not isinstance(raw, bool):
        raise ConfigError(f"{where} must be true or false")
    return raw


def _number(raw: Any, default: float, where: str, low: float = 0.0, high: float = float("inf")) -> float:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not low <= raw <= high:
        raise ConfigError(f"{where} must be a number in [{low}, {high}]")
    return float(raw)


def _size_routes(raw: Any, routes: dict[str, Route]) -> tuple[tuple[int, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("gateway.size_routes must be a list of {above: PIXELS, route: NAME}")
    rules = []
    for index, rule in enumerate(raw):
        where = f"gateway.size_routes[{index}]"
        values = _section(rule, where)
        _only(values, {"above", "route"}, where)
        above = values.get("above")
        if isinstance(above, bool) or not isinstance(above, int) or above < 1:
            raise ConfigError(f"{where}.above must be a positive integer")
        if values.get("route") not in routes:
            raise ConfigError(f"{where}.route {values.get('route')!r} is not one of the routes")
        rules.append((above, values["route"]))
    return tuple(sorted(rules))


def _safety(raw: Any) -> SafetyConfig:
    values = _section(raw, "safety")
    _only(values, {"word_filter", "classifier"}, "safety")
    words = _section(values.get("word_filter"), "safety.word_filter")
    _only(words, {"enabled", "use_default_list", "extra_words", "extra_files"}, "safety.word_filter")
    word_filter = WordFilterConfig(
        enabled=_flag(words.get("enabled"), True, "safety.word_filter.enabled"),
        use_default_list=_flag(words.get("use_default_list"), True, "safety.word_filter.use_default_list"),
        extra_words=_strings(words.get("extra_words"), "safety.word_filter.extra_words"),
        extra_files=_strings(words.get("extra_files"), "safety.word_filter.extra_files"),
    )
    cls = _section(values.get("classifier"), "safety.classifier")
    _only(cls, _STAGE_KEYS | {"enabled", "checkpoint", "threshold", "replacement", "device"}, "safety.classifier")
    defaults = ClassifierConfig()
    classifier = ClassifierConfig(
        enabled=_flag(cls.get("enabled"), False, "safety.classifier.enabled"),
        checkpoint=_checkpoint(cls.get("checkpoint", defaults.checkpoint), "safety.classifier"),
        threshold=_number(cls.get("threshold"), defaults.threshold, "safety.classifier.threshold", 0.0, 1.0),
        replacement=str(cls.get("replacement", defaults.replacement)),
        device=cls.get("device"),
        stage=_stage({k: cls[k] for k in _STAGE_KEYS if k in cls}, "safety.classifier"),
    )
    return SafetyConfig(word_filter=word_filter, classifier=classifier)


def _auth(raw: Any) -> AuthConfig:
    values = _section(raw, "auth")
    _only(values, {"enabled", "key_hashes", "key_hashes_env", "requests_per_minute", "burst"}, "auth")
    hashes = _strings(values.get("key_hashes"), "auth.key_hashes")
    for digest in hashes:
        if not _is_sha256(digest):
            raise ConfigError("auth.key_hashes must hold SHA-256 hex digests (64 hex characters), not keys")
    burst = _number(values.get("burst"), 10, "auth.burst", 1)
    return AuthConfig(
        enabled=_flag(values.get("enabled"), False, "auth.enabled"),
        key_hashes=tuple(h.lower() for h in hashes),
        key_hashes_env=str(values.get("key_hashes_env", AuthConfig.key_hashes_env)),
        requests_per_minute=_number(values.get("requests_per_minute"), 0.0, "auth.requests_per_minute"),
        burst=int(burst),
    )


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _only(values: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}")


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


def cache_dir() -> Path:
    """Where materialized checkpoints are kept between starts (SANA_SERVE_CACHE)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sana-serve"
    return Path(os.environ.get("SANA_SERVE_CACHE", default))
