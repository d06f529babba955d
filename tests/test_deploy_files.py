"""The KubeRay manifest, Dockerfile and Prometheus config agree with serve_config.yaml and the README."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from serve.config import parse_app_config

ROOT = Path(__file__).resolve().parent.parent


def _rayservice() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())


def test_rayservice_serve_config_is_serve_config_yaml():
    manifest = _rayservice()
    assert manifest["kind"] == "RayService"
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def test_large_memory_group_matches_the_4k_route_placement():
    manifest = _rayservice()
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    config = parse_app_config(serve_config["applications"][0]["args"])
    placement = config.routes["sana-1600m-4k"].placement
    groups = {g["groupName"]: g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    large = groups["large-memory-gpu"]["rayStartParams"]
    advertised = json.loads(json.loads(large["resources"]))  # KubeRay passes it quoted to `ray start`
    for name, amount in placement.resources.items():
        assert advertised.get(name, 0) >= amount
    labels = dict(item.split("=", 1) for item in large["labels"].split(","))
    assert labels == placement.label_selector
    # The plain GPU group carries neither, so 4K work cannot land there.
    assert "resources" not in groups["gpu"]["rayStartParams"] and "labels" not in groups["gpu"]["rayStartParams"]
    for group in groups.values():
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_metrics_port_is_exported_everywhere_prometheus_scrapes():
    manifest = _rayservice()
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert {g["rayStartParams"]["metrics-export-port"] for g in groups} == {"8080"}
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert jobs["sana-serve-local"]["static_configs"][0]["targets"] == ["127.0.0.1:8080"]


def _torch_pin(text: str) -> str:
    pins = set(re.findall(r"pip install[^\n]*?\btorch==([\w.+]+)", text))
    assert len(pins) == 1, pins
    return pins.pop()


def test_dockerfile_installs_like_the_readme():
    readme = (ROOT / "README.md").read_text()
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert _torch_pin(dockerfile) == _torch_pin(readme) == _torch_pin(ci)
    # Then the project itself, torch already satisfied (the image adds C2PA signing; the README the
    # test extra, editable).
    steps = [line for line in dockerfile.splitlines() if line.startswith("RUN pip install")]
    assert steps == ["RUN pip install torch==2.13.0", "RUN pip install '.[c2pa]'"]
    assert "pip install -e '.[test]'" in readme
    assert re.search(r"COPY pyproject.toml .*serve_config.yaml", dockerfile)
