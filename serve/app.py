"""App builder: the `import_path` target (`serve.app:build_app`) for `serve run`/`serve deploy`.

Its argument is typed: Ray Serve validates the application's YAML `args` into an `AppConfig`
before calling it. Builds one shared TextEncoder, one (Denoiser, Decoder) pair per route, the
optional prompt classifier and image checker, the Gateway that composes them, and the JobStore
every gateway replica shares; each deployment's Ray options come from the config.
"""

# No `from __future__ import annotations` here: Serve reads build_app's annotation as a class.
from typing import Any

from ray.serve import Application

from serve.config import AppConfig, parse_app_config
from serve.gateway import Gateway
from serve.jobs.store import JobStore
from serve.stages.decoder import Decoder
from serve.stages.denoiser import Denoiser
from serve.stages.image_checker import ImageChecker
from serve.stages.safety_classifier import SafetyClassifier
from serve.stages.text_encoder import TextEncoder


def stage_deployment_name(kind: str, route: str) -> str:
    return f"{kind}-{route}"


def build_app(args: AppConfig) -> Application:
    """Serve's application builder entry point (also takes the raw `args` mapping)."""
    config = args if isinstance(args, AppConfig) else parse_app_config(args)
    enc = config.text_encoder
    text_encoder = TextEncoder.options(**enc.deployment).bind(enc.checkpoint, enc, enc.cache_size, enc.device)
    routes: dict[str, dict[str, Any]] = {}
    for name, route in config.routes.items():
        denoiser = Denoiser.options(
            name=stage_deployment_name("Denoiser", name), **route.deployment(route.denoiser)
        ).bind(route.checkpoint, route.denoiser, name, route.device,
               {lora: entry.source for lora, entry in route.loras.items()}, route.max_loras_per_replica)
        decoder = Decoder.options(
            name=stage_deployment_name("Decoder", name), **route.deployment(route.decoder)
        ).bind(route.checkpoint, route.decoder, route.tiling, route.device)
        routes[name] = {"denoiser": denoiser, "decoder": decoder}
    classifier_config = config.safety.classifier
    classifier = (
        SafetyClassifier.options(**classifier_config.deployment).bind(classifier_config)
        if classifier_config.enabled else None
    )
    checker_config = config.safety.image_checker
    image_checker = (
        ImageChecker.options(**checker_config.deployment).bind(checker_config)
        if checker_config.enabled and any(route.image_check for route in config.routes.values()) else None
    )
    job_store = JobStore.options(**config.jobs.store).bind(config.jobs)
    return Gateway.options(**config.gateway.deployment).bind(config, text_encoder, routes, classifier, job_store,
                                                             image_checker)
