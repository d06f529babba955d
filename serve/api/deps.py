"""What the routers need from the gateway, attached to the FastAPI app by the factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from serve.config import AppConfig, files_dir
from serve.gate.auth import Authenticator
from serve.gate.validation import RequestValidator
from serve.generation.handles import StageHandles
from serve.generation.service import GenerationService
from serve.jobs.files import DirectoryFileStore, FileStore
from serve.jobs.runner import JobRunner
from serve.jobs.webhooks import WebhookSender
from serve.metrics import GatewayMetrics


@dataclass(frozen=True)
class ApiDeps:
    config: AppConfig
    service: GenerationService
    validator: RequestValidator
    auth: Authenticator
    metrics: GatewayMetrics
    files: FileStore
    webhooks: WebhookSender
    job_store: Any | None = None  # the JobStore's handle (None: no job endpoints)
    job_runner: JobRunner | None = None  # runs queued jobs in this replica
    replica: str = ""  # this gateway replica's id, sent as X-Served-By (tracing across replicas)


def build_deps(config: AppConfig, stages: StageHandles, metrics: GatewayMetrics, job_store: Any | None = None,
               replica: str = "") -> ApiDeps:
    """The routers' dependencies from the config: what the Gateway wires, and the unit tier too."""
    largest_n = max(config.max_images(route) for route in config.routes)  # the schema's n bound
    service = GenerationService(config, stages, metrics)
    validator = RequestValidator(config.gateway.limits, largest_n)
    files = DirectoryFileStore(files_dir(config.files), config.files.ttl_s, config.files.max_bytes)
    webhooks = WebhookSender(config.jobs.webhooks, metrics.webhook_attempt)
    runner = (JobRunner(job_store, service, validator, files, webhooks, config.jobs)
              if job_store is not None else None)
    return ApiDeps(config, service, validator, Authenticator(config.auth), metrics, files, webhooks,
                   job_store, runner, replica)


def deps(request: Request) -> ApiDeps:
    return request.app.state.deps


def authorize(request: Request) -> str | None:
    """FastAPI dependency: the caller's key digest; Unauthorized or RateLimited otherwise."""
    return deps(request).auth.check(request.headers.get("authorization"))
