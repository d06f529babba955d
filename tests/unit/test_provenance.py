"""Every returned file is marked AI-generated (XMP DigitalSourceType) and, unless turned off,
carries the generation parameters in the `parameters` format; read back with Pillow."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from serve.generation.service import GenerationService
from serve.output.encoding import encode_image
from serve.output.provenance import (
    DIGITAL_SOURCE_TYPE,
    EXIF_IFD,
    USER_COMMENT,
    Provenance,
    parameters_text,
    read_user_comment,
)
from serve.schemas import ImageGenerationRequest
from tests.unit.fakes import RecordingMetrics, app_config, fake_stages

HEART = "\u2764\ufe0f"


def read_back(data: bytes) -> tuple[str | None, str | None]:
    """(the XMP packet, the parameters) of an encoded file, as a reader of each format finds them."""
    image = Image.open(io.BytesIO(data))
    image.load()
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8")
    if image.format == "PNG":
        return xmp, image.info.get("parameters")
    raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    return xmp, read_user_comment(raw) if raw is not None else None


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_each_format_carries_the_marking_and_the_parameters(output_format):
    text = parameters_text(prompt=f"a {HEART} fox, 一只狐狸", negative_prompt="fog", steps=20, sampler="scm",
                           guidance_scale=4.5, seed=7, width=96, height=64, model="sprint", lora="a", lora_scale=0.5)
    xmp, parameters = read_back(encode_image(np.full((64, 96, 3), 90, np.uint8), output_format, Provenance(text)))
    assert DIGITAL_SOURCE_TYPE in xmp and "sana-serve" in xmp
    assert parameters == text
    assert parameters.splitlines()[1] == "Negative prompt: fog"
    assert "Steps: 20, Sampler: scm, CFG scale: 4.5, Seed: 7, Size: 96x64, Model: sprint, Lora: a:0.5" in parameters


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_without_parameters_the_marking_stays(output_format):
    xmp, parameters = read_back(encode_image(np.zeros((8, 8, 3), np.uint8), output_format))
    assert DIGITAL_SOURCE_TYPE in xmp and parameters is None


def _generate(config) -> bytes:
    service = GenerationService(config, fake_stages(config.routes).handles(), RecordingMetrics())
    request = ImageGenerationRequest(prompt="a fox and a gun", size="128x96", num_inference_steps=2, seed=3,
                                     negative_prompt="fog", guidance_scale=3.0)
    return asyncio.run(service.generate(request, request_id="r")).images[0]


def test_the_service_writes_the_request_as_generated():
    config = app_config(safety__word_filter__extra_words=["gun"])
    _, parameters = read_back(_generate(config))
    assert parameters.splitlines()[0] == f"a fox and a {HEART}"  # after the word filter
    assert "Steps: 2, Sampler: flow-dpm-solver, CFG scale: 3, Seed: 3, Size: 128x96, Model: r1k" in parameters


def test_parameters_can_be_turned_off_but_not_the_marking():
    xmp, parameters = read_back(_generate(app_config(gateway__provenance_parameters=False)))
    assert parameters is None and DIGITAL_SOURCE_TYPE in xmp


def exiftool(data: bytes, tmp_path, suffix: str) -> dict:
    """What exiftool (Debian: libimage-exiftool-perl; .ci/run installs it) reads from a file."""
    import json
    import shutil
    import subprocess

    assert shutil.which("exiftool"), "exiftool is missing: apt-get install libimage-exiftool-perl"
    path = tmp_path / f"image.{suffix}"
    path.write_bytes(data)
    out = subprocess.run(["exiftool", "-j", "-charset", "utf8", "-XMP:all", "-PNG:all", "-EXIF:all", str(path)],
                         capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)[0]


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_exiftool_reads_the_marking_and_the_parameters(output_format, tmp_path):
    text = f"a {HEART} fox\nNegative prompt: fog\nSteps: 2, Seed: 7"
    tags = exiftool(encode_image(np.full((64, 96, 3), 90, np.uint8), output_format, Provenance(text)),
                    tmp_path, output_format)
    assert tags["DigitalSourceType"] == DIGITAL_SOURCE_TYPE and tags["CreatorTool"].startswith("sana-serve")
    assert tags["Parameters" if output_format == "png" else "UserComment"] == text
    bare = exiftool(encode_image(np.full((64, 96, 3), 90, np.uint8), output_format), tmp_path, output_format)
    assert bare["DigitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert "Parameters" not in bare and "UserComment" not in bare
