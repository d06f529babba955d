"""The image safety check and the invisible watermark in the served app, on the shipped shapes model.

The checker is `materialize tiny-image-checker`: a real transformers ViT image classifier whose
"nsfw" score is the share of the picture that is red, so "a red heart" is flagged and "a blue star
on a yellow background" is not. The watermark is read back from what the API returned, also after
a JPEG re-encode at quality 75, with `sana-serve verify-watermark`; the C2PA manifest of each file
validates against the test root.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.image_checker import ImageChecker
from models.materialize import materialize
from serve.output.watermark import detected, read_watermark
from tests.c2pa_certs import make_signing_files, validation
from tests.serve_harness import decode_images, deployed, local_args, settled_metric

APP = "sana-image-safety"
PAYLOAD = "test-mark"
PLACEHOLDER = (40, 50, 60)
UNSAFE, SAFE = "a red heart", "a blue star on a yellow background"


@pytest.fixture(scope="module")
def checker_checkpoint(tmp_path_factory) -> Path:
    return materialize("tiny-image-checker", tmp_path_factory.mktemp("image-checker"))


def _solid(rgb: tuple[int, int, int], side: int = 96) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (side, side, 3)).copy()


def test_the_stand_in_scores_red_pictures_high_and_others_low(checker_checkpoint):
    checker = ImageChecker.from_pretrained(str(checker_checkpoint), device="cpu")
    white, red, blue = _solid((255, 255, 255)), _solid((225, 30, 30)), _solid((30, 80, 225))
    half_red = white.copy()
    half_red[:, :48] = (225, 30, 30)
    scores = checker.scores([white, red, blue, half_red])
    assert scores[1] > 0.99 and scores[3] > 0.99 and scores[0] < 0.01 and scores[2] < 0.01
    assert checker.scores([red])[0] == pytest.approx(scores[1], abs=1e-6)  # batch-independent
    assert checker.scores([]) == []
    with pytest.raises(ValueError, match="no label"):
        ImageChecker.from_pretrained(str(checker_checkpoint), device="cpu", unsafe_labels=["porn"])


@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    return make_signing_files(tmp_path_factory.mktemp("c2pa"))


@pytest.fixture(scope="module")
def base_url(ray_serve, shapes_checkpoint, checker_checkpoint, signing):
    args = local_args(str(shapes_checkpoint))
    args["safety"]["image_checker"] = {
        "enabled": True, "checkpoint": str(checker_checkpoint), "threshold": 0.5, "action": "replace",
        "placeholder_rgb": list(PLACEHOLDER), "deployment": {"ray_actor_options": {"num_cpus": 0.1}},
    }
    args["gateway"]["watermark"] = {"enabled": True, "payload": PAYLOAD}
    args["gateway"]["c2pa"] = {"certificate_chain_file": str(signing.certificate_chain_file),
                               "private_key_file": str(signing.private_key_file)}
    with deployed(args, APP, "/checked"):
        yield f"{ray_serve}/checked"


def _generate(base_url: str, prompt: str, **extra) -> dict:
    body = {"prompt": prompt, "size": "512x512", "seed": 4, **extra}
    response = httpx.post(f"{base_url}/v1/images/generations", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def _checks(result: str) -> float:
    """Images this app's check gave `result`, once Ray has exported all of them."""
    return settled_metric("ray_sana_image_checks_total", APP, result=result, kind="image")


def test_a_flagged_image_is_replaced_by_the_placeholder_and_says_so(base_url):
    before = _checks("flagged")
    payload = _generate(base_url, UNSAFE)
    assert payload["data"][0]["flagged"] is True
    image = decode_images(payload)[0]
    assert image.shape == (512, 512, 3) and (image == PLACEHOLDER).all()
    assert payload["timings_ms"]["image_check"] > 0
    assert _checks("flagged") == before + 1


def test_a_safe_image_passes_unchanged_and_carries_the_watermark(base_url, tmp_path):
    before = _checks("passed")
    payload = _generate(base_url, SAFE, n=2)
    assert [item["flagged"] for item in payload["data"]] == [False, False]
    images = decode_images(payload)
    assert not (images == PLACEHOLDER).all(axis=-1).any()
    # The watermark reads back from the file as returned and after a JPEG re-encode at quality 75.
    raw = base64.b64decode(payload["data"][0]["b64_json"])
    assert read_watermark(images[0], len(PAYLOAD)) == PAYLOAD.encode()
    (tmp_path / "served.png").write_bytes(raw)
    Image.open(io.BytesIO(raw)).save(tmp_path / "recoded.jpg", quality=75)
    Image.fromarray(_solid((200, 180, 20), 512)).save(tmp_path / "plain.png")
    for name, status in (("served.png", 0), ("recoded.jpg", 0), ("plain.png", 1)):
        verified = subprocess.run([sys.executable, "-m", "serve.cli", "verify-watermark", str(tmp_path / name),
                                   "--payload", PAYLOAD], capture_output=True, text=True, timeout=120)
        assert verified.returncode == status, (name, verified.stdout, verified.stderr)
        assert json.loads(verified.stdout)["match"] is (status == 0)
    assert _checks("passed") == before + 2


def test_the_placeholder_carries_the_marking_but_no_parameters_nor_watermark(base_url):
    from serve.output.provenance import DIGITAL_SOURCE_TYPE
    from tests.unit.test_provenance import read_back

    flagged = _generate(base_url, UNSAFE, output_format="jpeg")
    xmp, parameters = read_back(base64.b64decode(flagged["data"][0]["b64_json"]))
    assert DIGITAL_SOURCE_TYPE in xmp and parameters is None
    assert not detected(read_watermark(decode_images(flagged)[0], len(PAYLOAD)), PAYLOAD.encode())
    passed = _generate(base_url, SAFE, output_format="jpeg")
    xmp, parameters = read_back(base64.b64decode(passed["data"][0]["b64_json"]))
    assert DIGITAL_SOURCE_TYPE in xmp and parameters.startswith(SAFE + "\n")


def test_streamed_and_job_results_say_whether_each_image_was_flagged(base_url):
    body = {"prompt": UNSAFE, "size": "512x512", "seed": 4, "stream": True, "partial_images": 1}
    completed = []
    with httpx.stream("POST", f"{base_url}/v1/images/generations", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and "image_generation.completed" in line:
                completed.append(json.loads(line[6:]))
    assert [event["flagged"] for event in completed] == [True]
    job = httpx.post(f"{base_url}/v1/images/jobs", json={"prompt": SAFE, "size": "512x512", "seed": 4},
                     timeout=60).json()
    deadline = time.monotonic() + 180
    while (record := httpx.get(f"{base_url}/v1/images/jobs/{job['id']}", timeout=30).json())["status"] in (
            "queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert record["status"] == "completed", record
    assert [item["flagged"] for item in record["result"]["data"]] == [False]


def test_every_returned_file_carries_a_trusted_c2pa_manifest(base_url, signing):
    from serve.output.provenance import DIGITAL_SOURCE_TYPE

    for prompt, output_format in ((SAFE, "webp"), (UNSAFE, "png")):  # the placeholder is signed too
        payload = _generate(base_url, prompt, output_format=output_format)
        state, manifest = validation(base64.b64decode(payload["data"][0]["b64_json"]), f"image/{output_format}",
                                     signing.root_pem)
        assert state == "Trusted", prompt
        assert DIGITAL_SOURCE_TYPE in json.dumps(manifest["assertions"])
