"""`sana-serve run`: start (or join) Ray, deploy the application, block until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve.checkpoint_specs import is_materialized, resolve_checkpoint
from serve.config import (
    DEFAULT_LOCAL_CONFIG,
    AppConfig,
    cache_dir,
    load_serve_config,
    parse_app_config,
)


@dataclass(frozen=True)
class RunOptions:
    config: Path | None = None
    model: str | None = None
    host: str | None = None
    port: int | None = None
    metrics_port: int | None = None  # Ray's Prometheus endpoint on this node (None: Ray picks one)


@dataclass(frozen=True)
class Application:
    name: str
    route_prefix: str
    config: AppConfig


def load_applications(options: RunOptions) -> tuple[list[Application], dict[str, Any]]:
    """The applications of the config file (the embedded default without one), with --model applied."""
    serve_config = load_serve_config(options.config or DEFAULT_LOCAL_CONFIG)
    apps = []
    for index, raw in enumerate(serve_config["applications"]):
        config = parse_app_config(raw.get("args") or {})
        if options.model and index == 0:
            config = config.with_default_checkpoint(options.model)
        apps.append(Application(str(raw.get("name", "default")), str(raw.get("route_prefix", "/")), config))
    return apps, dict(serve_config.get("http_options") or {})


def _materialize_up_front(apps: list[Application]) -> None:
    # Replicas would materialize on demand too; doing it here once prints where and avoids a race.
    specs = {app.config.text_encoder.checkpoint for app in apps}
    specs |= {route.checkpoint for app in apps for route in app.config.routes.values()}
    for spec in sorted(s for s in specs if is_materialized(s)):
        print(f"checkpoint {spec}: {resolve_checkpoint(spec)}", flush=True)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def _drain(apps: list[Application]) -> int:
    """Every app's gateway stops admitting; wait (up to each app's drain grace) for the generations
    in flight to finish. Returns how many were still running when the grace ran out."""
    from ray import serve

    handles = [(serve.get_app_handle(app.name), app.config.gateway.admission.drain_grace_s) for app in apps]
    for handle, _ in handles:
        handle.drain.remote().result(timeout_s=30)
    # Said once every gateway has acknowledged: from here on a new request gets 503.
    print("draining: new requests get 503 + Retry-After; waiting for those in flight", flush=True)
    deadline = time.monotonic() + max(grace for _, grace in handles)
    while True:
        left = sum(handle.inflight.remote().result(timeout_s=30) for handle, _ in handles)
        if left == 0 or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def run(options: RunOptions) -> int:
    import ray
    from ray import serve

    from serve.app import build_app

    apps, http_options = load_applications(options)
    host = options.host or http_options.get("host", "127.0.0.1")
    port = options.port if options.port is not None else int(http_options.get("port", 8000))
    print(f"SANA_SERVE_CACHE={cache_dir()}", flush=True)
    _materialize_up_front(apps)

    started_ray = not ray.is_initialized()
    if started_ray:
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, include_dashboard=False)  # the cluster's own metrics settings apply
        else:
            # One machine: give it every custom resource the routes ask for (e.g. large_memory),
            # so the 4K route places here too.
            resources = {}
            for app in apps:
                resources.update(app.config.custom_resources())
            if resources:
                print(f"local Ray node resources: {resources}", flush=True)
            ray.init(include_dashboard=False, resources=resources, _metrics_export_port=options.metrics_port)
            if options.metrics_port:
                print(f"Prometheus metrics: http://127.0.0.1:{options.metrics_port}/metrics", flush=True)
    try:
        serve.start(http_options={"host": host, "port": port})
        for app in apps:
            serve.run(build_app(app.config), name=app.name, route_prefix=app.route_prefix)
        print(f"sana-serve is up: open http://{host}:{port}/ in a browser; API at /v1/images/generations, "
              "docs at /docs; Ctrl-C stops it", flush=True)
        _wait_for_signal()
        left = _drain(apps)
        print(f"shutting down ({left} generations still in flight)" if left else "shutting down", flush=True)
        if not started_ray:
            # On a shared cluster remove only what we deployed; our own Ray goes down whole below.
            for app in apps:
                serve.delete(app.name)
    finally:
        if started_ray:
            ray.shutdown()
    return 0
