"""The `sana-serve` console script, end to end in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from tests.reference import reference_images


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serve.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_materialize_then_generate_writes_the_reference_pixels(tmp_path, reference_pipeline):
    ckpt = tmp_path / "ckpt"
    done = _cli("materialize", "tiny", str(ckpt))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "fox.png"
    done = _cli(
        "generate", "--model", str(ckpt), "--prompt", "a red fox", "--negative-prompt", "blurry",
        "--width", "640", "--height", "480", "--steps", "2", "--guidance", "4.0", "--seed", "42", "--n", "2",
        "--out", str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "seed 42" in done.stdout
    # The CLI's checkpoint has the same seed as the session's, so diffusers on that one is the reference.
    expected = reference_images(
        reference_pipeline, "a red fox", negative_prompt="blurry", width=640, height=480, num_images=2,
        steps=2, guidance_scale=4.0, seed=42,
    )
    for i in range(2):
        pixels = np.asarray(Image.open(tmp_path / f"fox-{i}.png").convert("RGB"))
        assert np.array_equal(pixels, expected[i])


def test_generate_default_size_and_random_seed(tmp_path, tiny_checkpoint):
    out = tmp_path / "one.png"
    done = _cli("generate", "--model", str(tiny_checkpoint), "--prompt", "x", "--steps", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (1024, 1024)
    assert "seed " in done.stdout


def test_errors_are_one_line_and_exit_nonzero(tmp_path, tiny_checkpoint):
    done = _cli("materialize", "nope", str(tmp_path / "x"))
    assert done.returncode == 2 and "unknown architecture 'nope'" in done.stderr and "Traceback" not in done.stderr
    done = _cli("generate", "--model", str(tmp_path / "missing"), "--prompt", "x", "--out", str(tmp_path / "a.png"))
    assert done.returncode == 2 and "neither a folder nor" in done.stderr and "Traceback" not in done.stderr
    done = _cli("generate", "--model", str(tiny_checkpoint), "--prompt", "x", "--steps", "0",
                "--out", str(tmp_path / "a.png"))
    assert done.returncode == 2 and "steps" in done.stderr and "Traceback" not in done.stderr
    done = _cli("generate", "--model", str(tiny_checkpoint), "--prompt", "x", "--out", str(tmp_path / "a.xyz"))
    assert done.returncode != 0 and "extension" in done.stderr
