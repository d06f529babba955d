"""Per-request LoRA: pixels equal diffusers' SanaPipeline with the same adapter at the same scale;
adapters never leak into other requests; bad adapters fail alone. In-process, then served (Ray
Serve model multiplexing) over HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from models.errors import AdapterError
from models.pipeline import GenerationRequest
from tests.reference import diffusers_pipeline, in_process_pipeline, pixel_diff, reference_images

BASE = dict(prompt="a red fox in the snow", width=512, height=512, steps=3, seed=7)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from models.materialize import materialize

    root = tmp_path_factory.mktemp("loras")
    folders = {name: materialize(name, root / name) for name in ("tiny-lora-a", "tiny-lora-b", "small-lora")}
    broken = root / "broken"
    broken.mkdir()
    (broken / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file")
    folders["broken"] = broken
    return folders


def _reference(tiny_checkpoint: Path, adapter: Path | None, scale: float, **case) -> np.ndarray:
    """A fresh diffusers SanaPipeline with the adapter loaded and set to `scale` (diffusers' own way)."""
    pipe = diffusers_pipeline("SanaPipeline", tiny_checkpoint)
    if adapter is not None:
        pipe.load_lora_weights(adapter, adapter_name="x")
        pipe.set_adapters(["x"], adapter_weights=[scale])
    return reference_images(pipe, **case)


@pytest.fixture(scope="module")
def references(tiny_checkpoint, adapters):
    return {
        "none": _reference(tiny_checkpoint, None, 1.0, **BASE),
        "a": _reference(tiny_checkpoint, adapters["tiny-lora-a"], 1.0, **BASE),
        "a-0.5": _reference(tiny_checkpoint, adapters["tiny-lora-a"], 0.5, **BASE),
        "b": _reference(tiny_checkpoint, adapters["tiny-lora-b"], 1.0, **BASE),
    }


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    """Its own in-process pipeline: adapters loaded here stay out of the session's shared one."""
    return in_process_pipeline(tiny_checkpoint)


def _request(**extra) -> GenerationRequest:
    return GenerationRequest(**{**BASE, **extra})


def test_an_adapter_changes_pixels_as_diffusers_does_and_leaves_no_trace(pipeline, adapters, references):
    assert pixel_diff(references["a"], references["none"]) > 5  # the adapters are not no-ops
    assert pixel_diff(references["a"], references["b"]) > 5
    pipeline.load_lora("a", str(adapters["tiny-lora-a"]))
    pipeline.load_lora("b", str(adapters["tiny-lora-b"]))
    for lora, scale, key in (("a", 1.0, "a"), ("a", 0.5, "a-0.5"), ("b", 1.0, "b"), (None, 1.0, "none")):
        images = pipeline.generate([_request(lora=lora, lora_scale=scale)])[0].images
        assert np.array_equal(images, references[key]), (key, pixel_diff(images, references[key]))
    # In one call: each adapter (and none) runs as its own batch.
    mixed = pipeline.generate([_request(lora="a"), _request(), _request(lora="b")])
    for result, key in zip(mixed, ("a", "none", "b")):
        assert np.array_equal(result.images, references[key]), key


def test_bad_adapters_fail_by_name_and_the_transformer_keeps_serving(pipeline, adapters, references):
    for name in ("small-lora", "broken"):
        with pytest.raises(AdapterError, match=name):
            pipeline.load_lora(name, str(adapters[name]))
    assert name not in pipeline.denoiser.adapters.loaded
    images = pipeline.generate([_request()])[0].images
    assert np.array_equal(images, references["none"])


# --- served ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_url(ray_serve, tiny_checkpoint, adapters):
    from serve.local_app import local_app_args
    from tests.serve_harness import deployed

    args = local_app_args(str(tiny_checkpoint))
    route = args["routes"]["sana-shapes"]
    route["loras"] = {"a": {"source": str(adapters["tiny-lora-a"]), "description": "random adapter A"},
                      "b": {"source": str(adapters["tiny-lora-b"])},
                      "mismatched": {"source": str(adapters["small-lora"])},
                      "broken": {"source": str(adapters["broken"])}}
    route["max_loras_per_replica"] = 2
    route["denoiser"]["batching"] = {"max_batch_size": 8, "batch_wait_timeout_s": 0.3}
    route["denoiser"]["deployment"] = {**route["denoiser"]["deployment"], "num_replicas": 1}
    route["denoiser"]["deployment"].pop("autoscaling_config", None)
    with deployed(args, "sana-lora", "/lora"):
        yield f"{ray_serve}/lora"


def _post(url: str, **extra):
    import httpx

    body = {"prompt": BASE["prompt"], "size": "512x512", "num_inference_steps": 3, "seed": 7, **extra}
    return httpx.post(f"{url}/v1/images/generations", json=body, timeout=120)


def test_concurrent_requests_with_two_adapters_and_none_each_come_back_right(lora_url, references):
    from tests.serve_harness import decode_images

    asks = [dict(lora="a"), dict(lora="b"), dict(), dict(lora="a", lora_scale=0.5)]
    with ThreadPoolExecutor(len(asks)) as pool:
        answers = list(pool.map(lambda extra: _post(lora_url, **extra), asks))
    for extra, answer, key in zip(asks, answers, ("a", "b", "none", "a-0.5")):
        assert answer.status_code == 200, answer.text
        served = decode_images(answer.json())
        assert np.array_equal(served, references[key]), (key, pixel_diff(served, references[key]))
        # Different adapters (or scales) never share a batch.
        assert answer.json()["batch_size"] == 1
    # Right after, on the same replica: a request without adapter is unchanged.
    assert np.array_equal(decode_images(_post(lora_url).json()), references["none"])


def test_unknown_and_bad_adapters_are_clear_errors_and_others_still_work(lora_url, references):
    from tests.serve_harness import decode_images

    unknown = _post(lora_url, lora="nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "lora"
    assert "a, b, broken, mismatched" in unknown.json()["error"]["message"]
    for name in ("mismatched", "broken"):
        answer = _post(lora_url, lora=name)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "lora" and name in answer.json()["error"]["message"]
    orphan = _post(lora_url, lora_scale=0.5)
    assert orphan.status_code == 400 and orphan.json()["error"]["param"] == "lora_scale"
    assert np.array_equal(decode_images(_post(lora_url, lora="b").json()), references["b"])
    assert np.array_equal(decode_images(_post(lora_url).json()), references["none"])


def test_the_model_card_lists_the_adapters(lora_url):
    import httpx

    card = httpx.get(f"{lora_url}/v1/models", timeout=30).json()["data"][0]
    assert [lora["id"] for lora in card["loras"]] == ["a", "b", "mismatched", "broken"]
    assert card["loras"][0]["description"] == "random adapter A"
