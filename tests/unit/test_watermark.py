"""The invisible watermark: our vectorized embedding writes what invisible-watermark's own
DWT-DCT-SVD frame encoder writes, the library reads it back, and it is invisible."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from serve.output.watermark import MIN_SIDE, Watermark, chance_of_match, detected, read_watermark
from train.shapes import parse_caption, render


def _textured(side: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picture = np.asarray(render(parse_caption("a blue star on a yellow background"), side, side, random.Random(seed)))
    return np.clip(picture * 0.85 + 20 + rng.normal(0, 10, picture.shape), 0, 255).astype(np.uint8)


def _library_embed(rgb: np.ndarray, payload: bytes) -> np.ndarray:
    """The library's algorithm block by block (its EmbedDwtDctSvd.encode_frame), with the channel
    rebuilt the way serve.output.watermark rebuilds it (float, details in order, clipped)."""
    import cv2
    import pywt
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd

    bits = [int(b) for b in np.unpackbits(np.frombuffer(payload, np.uint8))]
    embedder = EmbedDwtDctSvd(bits, wmLen=len(bits))
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    rows, cols = (side // 4 * 4 for side in bgr.shape[:2])
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    approximation, details = pywt.dwt2(yuv[:rows, :cols, 1].astype(np.float64), "haar")
    embedder.encode_frame(approximation, embedder._scales[1])
    yuv[:rows, :cols, 1] = np.clip(np.rint(pywt.idwt2((approximation, details), "haar")), 0, 255).astype(np.uint8)
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)[..., ::-1]


def test_the_vectorized_embedding_writes_what_the_library_writes():
    picture = _textured(516)  # not a multiple of 8: the library's cropping to whole blocks too
    ours, theirs = Watermark("sana-gen").embed(picture), _library_embed(picture, b"sana-gen")
    difference = np.abs(ours.astype(int) - theirs)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999


def test_the_library_reads_it_back_and_it_is_invisible():
    picture = _textured()
    marked = Watermark("sana-gen").embed(picture)
    assert read_watermark(marked, 8) == b"sana-gen"
    assert 10 * np.log10(255**2 / np.mean((marked.astype(float) - picture) ** 2)) > 38  # PSNR, dB
    assert not detected(read_watermark(picture, 8), b"sana-gen")


def test_saturated_edges_get_no_speckles():
    # The library's own encoder wraps values past 255 around here (measured: up to 235 levels).
    picture = np.asarray(render(parse_caption("a blue star on a yellow background"), 512, 512, random.Random(0)))
    assert np.abs(Watermark("sana-gen").embed(picture).astype(int) - picture).max() < 40


def test_it_survives_a_jpeg_re_encode_at_quality_75():
    buffer = io.BytesIO()
    Image.fromarray(Watermark("sana-gen").embed(_textured())).save(buffer, "JPEG", quality=75)
    assert detected(read_watermark(np.asarray(Image.open(buffer).convert("RGB")), 8), b"sana-gen")


def test_small_images_are_left_alone():
    picture = _textured(MIN_SIDE - 1)
    assert Watermark("x").embed(picture) is picture


# 64 of 64: 2^-64; 58 of 64: (C(64,6) + C(64,5) + ... + 1) / 2^64 = 83,278,001 / 2^64; 32: 1/2 + C(64,32)/2^65.
@pytest.mark.parametrize(("matched", "expected"), [(64, 2.0**-64), (58, 83278001 / 2**64), (32, 0.5497)])
def test_the_chance_of_a_match_is_the_binomial_tail(matched, expected):
    payload = b"\x00" * 8
    found = np.packbits([1] * (64 - matched) + [0] * matched).tobytes()
    assert chance_of_match(found, payload) == pytest.approx(expected, rel=1e-3)
