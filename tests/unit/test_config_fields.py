"""Config validation without Ray: every field of every section, mistyped, is refused with its YAML
path; ranges and cross-field rules hold; the shipped configs parse."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from serve.config import AppConfig, ConfigError, Route, parse_app_config

ROOT = Path(__file__).resolve().parents[2]
LOCAL = yaml.safe_load((ROOT / "deploy" / "local.yaml").read_text())["applications"][0]["args"]
PRODUCTION = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]


def _leaf_paths(model: type[BaseModel], prefix: tuple) -> list[tuple]:
    """Every field path of `model`, through nested sections; maps of routes go through one route."""
    paths = []
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _leaf_paths(annotation, path)
        elif name == "routes":
            paths += _leaf_paths(Route, (*path, "sana-shapes"))
        else:
            paths.append(path)
    return paths


FIELD_PATHS = _leaf_paths(AppConfig, ())


def _wrong_value(current: Any) -> Any:
    # Something of the wrong type for whatever the field holds (or would hold).
    if isinstance(current, bool):
        return "yes"
    if isinstance(current, (int, float)):
        return "12"
    if isinstance(current, str):
        return 12
    if isinstance(current, list):
        return {"not": "a list"}
    return ["not", "a", "mapping"]


def _set(args: dict, path: tuple, value: Any) -> Any:
    target = args
    for key in path[:-1]:
        target = target.setdefault(key, {})
    current = target.get(path[-1])
    target[path[-1]] = value
    return current


def _yaml_path(path: tuple) -> str:
    return ".".join(path)


def test_every_field_is_covered():
    assert len(FIELD_PATHS) >= 50
    assert ("routes", "sana-shapes", "denoiser", "batching", "max_batch_size") in FIELD_PATHS
    assert ("text_encoder", "cache_size") in FIELD_PATHS and ("text_encoder", "device") in FIELD_PATHS


@pytest.mark.parametrize("path", FIELD_PATHS, ids=_yaml_path)
def test_every_mistyped_field_is_refused_with_its_yaml_path(path):
    args = copy.deepcopy(LOCAL)
    defaults = parse_app_config(LOCAL)
    current = defaults
    for key in path:
        current = current.get(key) if isinstance(current, dict) else getattr(current, key)
    _set(args, path, _wrong_value(current))
    with pytest.raises(ConfigError) as raised:
        parse_app_config(args)
    assert _yaml_path(path) in str(raised.value)


@pytest.mark.parametrize("path, value, words", [
    (("text_encoder", "cache_size"), -1, "greater than or equal to 0"),
    (("text_encoder", "device"), "gpu", "pattern"),
    (("routes", "sana-shapes", "denoiser", "torch_threads"), 0, "greater than or equal to 1"),
    (("routes", "sana-shapes", "denoiser", "deployment", "num_replica"), 2, "num_replica"),
    (("routes", "sana-shapes", "placement", "resources", "large_memory"), 0, "positive"),
    (("routes", "sana-shapes", "tiling", "stride"), 2000, "must not exceed tile"),
    (("gateway", "limits", "min_side"), 8192, "above max_side"),
    (("gateway", "stage_retries"), 9, "less than or equal to 5"),
    (("safety", "classifier", "threshold"), 1.5, "less than or equal to 1"),
    (("auth", "key_hashes"), ["sk-plain-key"], "SHA-256"),
    (("gateway", "size_routes"), [{"above": 10, "route": "nowhere"}], "size_routes[0].route"),
    (("routes", "sana-shapes", "denoiser", "batching", "max_batch_size"), 2, "below the 4 images"),
    (("safety", "image_checker", "placeholder_rgb"), [0, 0, 300], "channels must be in [0, 255]"),
    (("safety", "image_checker", "action"), "delete", "'replace' or 'flag'"),
    (("safety", "image_checker", "on_error"), "ignore", "'closed' or 'open'"),
    (("gateway", "watermark", "payload"), "\u00fc" * 9, "at most 16 bytes"),
    (("gateway", "c2pa"), {"certificate_chain_file": "c.pem", "private_key_file": "k.pem", "algorithm": "rsa"},
     "gateway.c2pa.algorithm"),
    (("gateway", "c2pa"), {"certificate_chain_file": "c.pem"}, "gateway.c2pa.private_key_file"),
])
def test_ranges_and_cross_field_rules(path, value, words):
    args = copy.deepcopy(LOCAL)
    _set(args, path, value)
    with pytest.raises(ConfigError, match=None) as raised:
        parse_app_config(args)
    assert words in str(raised.value)


def test_defaults_that_come_from_other_fields():
    args = copy.deepcopy(LOCAL)
    del args["default_route"]
    del args["text_encoder"]["checkpoint"]
    args["routes"]["sana-shapes"]["checkpoint"] = "some/repo"
    config = parse_app_config(args)
    assert config.default_route == "sana-shapes" and config.text_encoder.checkpoint == "some/repo"


def test_shipped_configs_parse_with_their_meaning():
    local, production = parse_app_config(LOCAL), parse_app_config(PRODUCTION)
    assert local.route_for_size(4096, 1024) == "sana-shapes-4k" and local.route_for_size(2048, 2048) == "sana-shapes"
    assert production.route_for_size(2000, 100) == "sana-1600m-2k"
    assert production.safety.classifier.enabled and production.text_encoder.cache_size == 4096
    assert production.safety.image_checker.enabled and production.safety.image_checker.on_error == "closed"
    assert production.gateway.watermark.enabled and not local.gateway.watermark.enabled
    assert not local.safety.image_checker.enabled
    four_k = production.routes["sana-1600m-4k"]
    options = four_k.deployment(four_k.decoder)["ray_actor_options"]
    assert options["num_gpus"] == 1 and options["resources"] == {"large_memory": 0.01}
    # The placement merges into a copy: the stage's own options are untouched.
    assert "resources" not in four_k.decoder.deployment["ray_actor_options"]


def test_the_config_documents_itself():
    schema = AppConfig.model_json_schema()
    batching = schema["$defs"]["Batching"]["properties"]["max_batch_size"]
    assert "images for the Denoiser" in batching["description"]
    assert schema["$defs"]["GatewayConfig"]["additionalProperties"] is False
