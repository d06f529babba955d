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


def bit_accuracy(found: bytes, expected: bytes) -> float:
    """Share of the payload's bits read back correctly (0.5 is chance)."""
    if len(found) != len(expected) or not expected:
        return 0.0
    bits = np.unpackbits(np.frombuffer(found, np.uint8)) == np.unpackbits(np.frombuffer(expected, np.uint8))
    return float(bits.mean())
