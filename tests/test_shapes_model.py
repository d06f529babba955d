"""The shipped shapes model: diffusers loads it, the served pixels equal diffusers', and the served
pictures show what their prompts say. Plus a smoke run of the training command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.reference import reference_images
from tests.serve_harness import decode_images, deployed, local_args
from train.shapes import judge, parse_caption

ROOT = Path(__file__).resolve().parent.parent
APP = "sana-shapes-model"


@pytest.fixture(scope="module")
def shapes_reference(shapes_checkpoint):
    from diffusers import SanaPipeline

    pipe = SanaPipeline.from_pretrained(shapes_checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def base_url(ray_serve, shapes_checkpoint):
    with deployed(local_args(str(shapes_checkpoint)), APP, "/shapes"):
        yield f"{ray_serve}/shapes"


def _post(base_url: str, body: dict) -> dict:
    response = httpx.post(f"{base_url}/v1/images/generations", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_shipped_checkpoint_is_a_512_class_sana_with_its_training_record(shapes_checkpoint):
    config = json.loads((shapes_checkpoint / "transformer" / "config.json").read_text())
    assert config["sample_size"] == 16 and config["patch_size"] == 1
    record = json.loads((shapes_checkpoint / "training.json").read_text())
    assert record["transformer"]["steps"] > 0 and record["autoencoder"]["steps"] > 0
    size = sum(f.stat().st_size for f in (ROOT / "models" / "packaged").rglob("*") if f.is_file())
    assert size < 30 * 2**20


def test_served_pixels_equal_diffusers_on_the_shapes_model(base_url, shapes_reference):
    body = {"prompt": "a blue star on a yellow background", "size": "768x512", "seed": 4,
            "num_inference_steps": 8}
    payload = _post(base_url, body)
    expected = reference_images(shapes_reference, body["prompt"], width=768, height=512, negative_prompt="",
                                num_images=1, steps=8, guidance_scale=4.5, seed=4)
    assert np.array_equal(decode_images(payload), expected)


CASES = [
    ("a red heart", "512x512", 1),
    ("a blue circle", "512x512", 2),
    ("a green square", "768x512", 1),
    ("a yellow star", "512x768", 1),
    ("a purple triangle", "512x512", 1),
    ("a black circle", "512x512", 1),
    ("a orange square", "512x512", 1),
    ("A red heart.", "512x512", 1),  # the safety filter's replacement
]


def test_served_pictures_follow_their_prompts(base_url):
    """The prompt steers the picture through the served pipeline. The shipped model is below the
    issue's accuracy goals (docs/models.md: 45% background, 16% foreground over random captions), so this
    guards what it does reach on these fixed prompts: backgrounds nearly always, foreground colours
    far above chance (1 in 8), and the safety replacement drawn red on white."""
    backgrounds = colors = pictures = 0
    for prompt, size, n in CASES:
        scene = parse_caption(prompt)
        payload = _post(base_url, {"prompt": prompt, "size": size, "n": n, "seed": 11})
        for picture in decode_images(payload):
            seen = judge(picture)
            pictures += 1
            backgrounds += seen.background == scene.background_color
            colors += seen.color == scene.color
            if prompt.lower().startswith("a red heart"):
                assert (seen.background, seen.color) == ("white", "red"), (prompt, seen)
    assert pictures == 9
    assert backgrounds >= 7, backgrounds
    assert colors >= 3, colors


def test_the_training_command_runs_end_to_end_in_seconds(tmp_path):
    out = tmp_path / "smoke"
    done = subprocess.run([sys.executable, "-m", "train", "--out", str(out), "--smoke"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "[transformer] step 1" in done.stdout and "eta" in done.stdout
    from diffusers import SanaPipeline

    pipe = SanaPipeline.from_pretrained(out)  # the layout diffusers loads
    assert pipe.transformer.config.sample_size == 16
