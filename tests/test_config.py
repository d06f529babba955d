"""Configuration: both shipped configs parse and build; bad configs are refused naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from serve.config import ConfigError, load_serve_config, parse_app_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [ROOT / "serve_config.yaml", ROOT / "deploy" / "local.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid_serve_configs_and_build(path):
    from ray.serve.schema import ServeDeploySchema

    from serve.app import build_app

    raw = load_serve_config(path)
    ServeDeploySchema.model_validate(raw)  # what `serve run`/`serve deploy` check
    app = raw["applications"][0]
    assert app["import_path"] == "serve.app:build_app"
    config = parse_app_config(app["args"])
    assert config.default_route in config.routes
    build_app(app["args"])  # binds every deployment with its options, deploys nothing


def test_production_config_uses_real_checkpoints_and_places_4k_on_large_memory():
    from models.registry import variant_for_repo

    config = parse_app_config(load_serve_config(CONFIGS[0])["applications"][0]["args"])
    for route in config.routes.values():
        assert variant_for_repo(route.checkpoint) is not None, route.checkpoint
        for stage in (route.denoiser, route.decoder):
            assert route.deployment(stage)["ray_actor_options"]["num_gpus"] > 0
    four_k = config.routes["sana-1600m-4k"]
    for stage in (four_k.denoiser, four_k.decoder):
        assert four_k.deployment(stage)["ray_actor_options"]["resources"] == {"large_memory": 0.01}
        assert four_k.deployment(stage)["ray_actor_options"]["label_selector"] == {
            "sana-serve/node-class": "large-memory"}
    for name in ("sana-1600m-1024", "sana-1600m-2k"):
        route = config.routes[name]
        assert "resources" not in route.deployment(route.denoiser)["ray_actor_options"]
    assert config.route_for_size(1024, 1024) == "sana-1600m-1024"
    assert config.route_for_size(2048, 1024) == "sana-1600m-2k"
    assert config.route_for_size(4096, 2048) == "sana-1600m-4k"
    assert config.custom_resources() == {"large_memory": 1.0}
    assert config.max_images("sana-1600m-4k") == 1


def test_local_config_is_cpu_only_with_fractional_cpus():
    raw = load_serve_config(CONFIGS[1])["applications"][0]["args"]
    config = parse_app_config(raw)
    assert config.text_encoder.checkpoint == "materialized:shapes"
    deployments = [config.text_encoder.deployment, config.gateway.deployment]
    for route in config.routes.values():
        deployments += [route.denoiser.deployment, route.decoder.deployment]
    for deployment in deployments:
        options = deployment["ray_actor_options"]
        assert options["num_cpus"] < 1 and "num_gpus" not in options


def _local_args() -> dict:
    return copy.deepcopy(yaml.safe_load(CONFIGS[1].read_text())["applications"][0]["args"])


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda a: a.update(routes={}), "routes"),
        (lambda a: a.update(default_route="nope"), "default_route"),
        (lambda a: a.update(surprise=1), "surprise"),
        (lambda a: a["routes"]["sana-shapes"].update(checkpoint=""), "checkpoint"),
        (lambda a: a["routes"]["sana-shapes"].update(colour="red"), "colour"),
        (lambda a: a["routes"]["sana-shapes"]["denoiser"]["batching"].update(max_batch_size=2), "max_batch_size"),
        (lambda a: a["routes"]["sana-shapes"]["denoiser"]["batching"].update(max_batch_size="8"), "max_batch_size"),
        (lambda a: a["routes"]["sana-shapes"]["denoiser"].update(torch_threads=0), "torch_threads"),
        (lambda a: a["gateway"]["limits"].update(max_side=-1), "max_side"),
        (lambda a: a["gateway"]["limits"].update(max_images=True), "max_images"),
        (lambda a: a["gateway"].update(deployment=[1]), "gateway.deployment"),
    ],
)
def test_bad_configs_are_refused_naming_the_key(mutate, key):
    args = _local_args()
    mutate(args)
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        parse_app_config(args)


def test_unreadable_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_serve_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications: {")
    with pytest.raises(ConfigError, match="YAML"):
        load_serve_config(bad)
    bad.write_text("just: text")
    with pytest.raises(ConfigError, match="applications"):
        load_serve_config(bad)


def test_model_flag_replaces_the_default_routes_checkpoint(tmp_path):
    from serve.runner import RunOptions, load_applications

    apps, http = load_applications(RunOptions(model=str(tmp_path)))
    config = apps[0].config
    assert config.routes[config.default_route].checkpoint == str(tmp_path)
    assert config.text_encoder.checkpoint == str(tmp_path)
    assert http["host"] == "127.0.0.1"


def test_ray_serve_validates_args_through_the_typed_app_builder():
    from pydantic import ValidationError
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve.app import build_app

    assert isinstance(call_user_app_builder_with_args_if_necessary(build_app, _local_args()), Application)
    args = _local_args()
    args["routes"]["sana-shapes"]["denoiser"]["batching"]["max_batch_size"] = "8"
    with pytest.raises(ValidationError, match=r"routes\.sana-shapes\.denoiser\.batching\.max_batch_size"):
        call_user_app_builder_with_args_if_necessary(build_app, args)
