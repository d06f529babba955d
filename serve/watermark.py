"""Invisible watermark: a short configured payload hidden in the pixels of every generated image.

The `invisible-watermark` library (the one SDXL's reference pipeline uses), method `dwtDctSvd`:
each bit of the payload is repeated over the 4x4 blocks of the image's Haar-wavelet approximation,
in the largest singular value of each block's DCT, in the luma and one chroma channel. Chosen over
its cheaper `dwtDct` because that one does not survive a JPEG re-encode at quality 75 (measured:
`python -m bench.watermark`), which is the least a copy passed around the web goes through.

Reading needs only the payload's length; the bits are voted over every block, so a copy cropped
slightly, resized back or re-encoded still reads. It is a provenance aid, not a security measure:
anyone with the library can read it, and a determined edit removes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHOD = "dwtDctSvd"
# dwtDctSvd works on the wavelet approximation of the image in 4x4 blocks: below this side there
# are too few blocks to vote a payload's bits reliably.
MIN_SIDE = 256


@dataclass(frozen=True)
class Watermark:
    """What to embed: the payload's UTF-8 bytes."""

    payload: str

    @property
    def data(self) -> bytes:
        return self.payload.encode("utf-8")

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """`pixels` (uint8 [H, W, 3], RGB) with the payload embedded; images below MIN_SIDE on a
        side are returned unchanged."""
        from imwatermark import WatermarkEncoder

        if min(pixels.shape[:2]) < MIN_SIDE:
            return pixels
        encoder = WatermarkEncoder()
        encoder.set_watermark("bytes", self.data)
        # The library works in OpenCV's BGR order.
        return np.ascontiguousarray(encoder.encode(np.ascontiguousarray(pixels[..., ::-1]), METHOD)[..., ::-1])


def read_watermark(pixels: np.ndarray, length: int) -> bytes:
    """The `length`-byte payload read from `pixels` (uint8 RGB), whatever is there (garbage when
    the image carries none: compare with what you expect)."""
    from imwatermark import WatermarkDecoder

    decoder = WatermarkDecoder("bytes", length * 8)
    return bytes(decoder.decode(np.ascontiguousarray(pixels[..., ::-1]), METHOD))


# A copy carries the watermark when this few of its bits could match the payload by chance: one
# false detection in a million unmarked images. Reading is a vote per bit, so a re-encoded or
# saturated image (flat white clips the embedding) can lose a bit or two and still be detected.
FALSE_DETECTION_RATE = 1e-6


def matching_bits(found: bytes, expected: bytes) -> int:
    if len(found) != len(expected):
        return 0
    return int((np.unpackbits(np.frombuffer(found, np.uint8)) == np.unpackbits(np.frombuffer(expected, np.uint8))).sum())


def chance_of_match(found: bytes, expected: bytes) -> float:
    """P(at least this many of the payload's bits match) for an image without the watermark, whose
    bits read as coin flips: the binomial tail."""
    bits, matched = 8 * len(expected), matching_bits(found, expected)
    return sum(math.comb(bits, k) for k in range(matched, bits + 1)) / 2**bits


def detected(found: bytes, expected: bytes) -> bool:
    return bool(expected) and chance_of_match(found, expected) < FALSE_DETECTION_RATE
