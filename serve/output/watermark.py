"""Invisible watermark: a short configured payload hidden in the pixels of every generated image.

The `invisible-watermark` library (the one SDXL's reference pipeline uses), method `dwtDctSvd`
(the embedding vectorized and its pixel handling fixed, read back by the library: see `_embed`):
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
from functools import cache

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
        if min(pixels.shape[:2]) < MIN_SIDE:
            return pixels
        bits = [int(bit) for bit in np.unpackbits(np.frombuffer(self.data, np.uint8))]  # as the library orders them
        # The library works in OpenCV's BGR order.
        return np.ascontiguousarray(_embed(np.ascontiguousarray(pixels[..., ::-1]), bits)[..., ::-1])


# The library's dwtDctSvd settings: 4x4 blocks; quantization step 36 in the U channel only (its
# `scales` [0, 36, 0] over Y, U, V); the payload's bits repeated over the blocks in row order.
_BLOCK, _SCALES = 4, (0, 36, 0)


def _embed(bgr: np.ndarray, bits: list[int]) -> np.ndarray:
    """The library's DWT-DCT-SVD embedding (what its `EmbedDwtDctSvd` writes and its decoder
    reads), vectorized over blocks, and with two of its pixel-handling bugs fixed.

    Per 4x4 block of the channel's Haar approximation: DCT, SVD, the largest singular value moved
    to the middle of the lower (bit 0) or upper (bit 1) half of its quantization step, back. The
    library loops over the blocks in Python (~0.3 s per 1024 px image holding the GIL); here all
    blocks go through one batched SVD (tests/unit/test_watermark.py checks the pixels against the
    library's own frame encoder). Fixed: the library writes the channel back into a uint8 array,
    so values pushed past 0 or 255 wrap around (bright speckles along saturated edges: pixels up to
    235 levels off), and rebuilds it with the horizontal and vertical details swapped (PSNR 32.1
    instead of 42.7 dB on textured pictures); both measured by `python -m bench.safety_provenance`.
    Here it is rebuilt in float, in order, rounded and clipped."""
    import cv2
    import pywt

    rows, cols = (side // 4 * 4 for side in bgr.shape[:2])
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    for channel, scale in enumerate(_SCALES[:2]):  # the library embeds in its first two channels only
        if scale <= 0:
            continue
        approximation, details = pywt.dwt2(yuv[:rows, :cols, channel].astype(np.float64), "haar")
        _encode_frame(approximation, bits, scale)
        rebuilt = pywt.idwt2((approximation, details), "haar")
        yuv[:rows, :cols, channel] = np.clip(np.rint(rebuilt), 0, 255).astype(np.uint8)
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)


@cache  # the same 4x4 matrix for every image
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II (what cv2.dct computes): X = D @ x @ D.T, x = D.T @ X @ D."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix


def _encode_frame(frame: np.ndarray, bits: list[int], scale: float) -> None:
    """In place: bit `bits[b % len(bits)]` into block b (row by row) of `frame`."""
    block_rows, block_cols = frame.shape[0] // _BLOCK, frame.shape[1] // _BLOCK
    height, width = block_rows * _BLOCK, block_cols * _BLOCK
    blocks = frame[:height, :width].reshape(block_rows, _BLOCK, block_cols, _BLOCK).transpose(0, 2, 1, 3)
    dct = _dct_matrix(_BLOCK)
    u, singular, vt = np.linalg.svd(dct @ blocks.reshape(-1, _BLOCK, _BLOCK) @ dct.T)
    wanted = np.resize(np.asarray(bits, np.float64), len(singular))
    singular[:, 0] = (singular[:, 0] // scale + 0.25 + 0.5 * wanted) * scale
    embedded = dct.T @ (u @ (singular[:, :, None] * vt)) @ dct
    frame[:height, :width] = embedded.reshape(block_rows, block_cols, _BLOCK, _BLOCK).transpose(0, 2, 1, 3).reshape(
        height, width)


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
