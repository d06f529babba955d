"""App builder: the `import_path` target (`serve.app:build_app`) for `serve run`/`serve deploy`.

Reads everything from the application's `args`: one shared TextEncoder, one (Denoiser, Decoder)
pair per route, and the Gateway that composes them. Each deployment's Ray options (replicas,
autoscaling, resources, queue limits) come from the config's `deployment` mappings.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve.config import AppConfig, parse_app_config
from serve.gateway import Gateway
from serve.stages import Decoder, Denoiser, SafetyClassifier, TextEncoder


def stage_deployment_name(kind: str, route: str) -> str:
    return f"{kind}-{route}"


def build_from_config(config: AppConfig) -> Application:
    enc = config.text_encoder
    text_encoder = TextEncoder.options(**enc.stage.deployment).bind(
        enc.checkpoint, enc.stage, enc.cache_size, enc.device
    )
    routes: dict[str, dict[str, Any]] = {}
    for route in config.routes.values():
        denoiser = Denoiser.options(
            name=stage_deployment_name("Denoiser", route.name), **route.denoiser.deployment
        ).bind(route.checkpoint, route.denoiser, route.name, route.device)
        decoder = Decoder.options(
            name=stage_deployment_name("Decoder", route.name), **route.decoder.deployment
        ).bind(route.checkpoint, route.decoder, route.tiling, route.device)
        routes[route.name] = {"denoiser": denoiser, "decoder": decoder}
    classifier_config = config.safety.classifier
    classifier = (
        SafetyClassifier.options(**classifier_config.stage.deployment).bind(classifier_config)
        if classifier_config.enabled else None
    )
    return Gateway.options(**config.gateway.deployment).bind(config, text_encoder, routes, classifier)


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application builder entry point."""
    return build_from_config(parse_app_config(args))
