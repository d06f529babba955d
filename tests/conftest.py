"""Shared fixtures: one tiny checkpoint per test session, materialized offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may reach the Hugging Face Hub: every checkpoint is materialized.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _materialized(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Path:
    from models.materialize import materialize

    return materialize(arch, tmp_path_factory.mktemp(arch), seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _materialized(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def reference_pipeline(tiny_checkpoint: Path):
    """diffusers' own SanaPipeline on the tiny checkpoint: the pixel reference."""
    from tests.reference import diffusers_pipeline

    return diffusers_pipeline("SanaPipeline", tiny_checkpoint)


@pytest.fixture(scope="session")
def pipeline(tiny_checkpoint: Path):
    from tests.reference import in_process_pipeline

    return in_process_pipeline(tiny_checkpoint)


@pytest.fixture(scope="session")
def sprint_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _materialized(tmp_path_factory, "tiny-sprint")


@pytest.fixture(scope="session")
def sprint_reference(sprint_checkpoint: Path):
    """diffusers' own SanaSprintPipeline on the tiny Sprint checkpoint."""
    from tests.reference import diffusers_pipeline

    return diffusers_pipeline("SanaSprintPipeline", sprint_checkpoint)


@pytest.fixture(scope="session")
def sprint_pipeline(sprint_checkpoint: Path):
    from tests.reference import in_process_pipeline

    return in_process_pipeline(sprint_checkpoint)


@pytest.fixture(scope="session")
def ray_serve():
    """One Ray instance and Serve HTTP proxy for the whole session, on a free loopback port."""
    import ray
    from ray import serve

    from tests.serve_harness import free_port

    port = free_port()
    os.environ["SANA_TEST_METRICS_PORT"] = str(free_port())
    # One node that carries large_memory, as `sana-serve run` starts it, so 4K routes place here.
    ray.init(num_cpus=8, resources={"large_memory": 1}, include_dashboard=False, configure_logging=False,
             log_to_driver=os.environ.get("SANA_TEST_RAY_LOGS") == "1",
             _metrics_export_port=int(os.environ["SANA_TEST_METRICS_PORT"]),
             # Metrics reach the endpoint within a second (default 10 s): metric tests wait less.
             _system_config={"metrics_report_interval_ms": 1000})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def shapes_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped shapes model (a copy of the package data)."""
    return _materialized(tmp_path_factory, "shapes")


@pytest.fixture(scope="session")
def tiny_4k_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.materialize import materialize

    return materialize("tiny-4k", tmp_path_factory.mktemp("tiny-4k"), seed=0)


@pytest.fixture(scope="session")
def serve_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sana-cache")
    os.environ["SANA_SERVE_CACHE"] = str(path)
    return path
