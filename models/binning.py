"""Resolution binning: a requested W×H maps to the closest trained aspect-ratio bin.

Sana (like PixArt) was trained on a fixed table of sizes per resolution class. The pipeline
generates at the bin's size and resizes-and-crops back to the requested size afterwards. The bin
tables are the ones diffusers' SanaPipeline uses, imported rather than copied so both agree.
"""

from __future__ import annotations

from functools import cache

from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
    ASPECT_RATIO_512_BIN,
    ASPECT_RATIO_1024_BIN,
)
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN
from diffusers.pipelines.sana.pipeline_sana import ASPECT_RATIO_4096_BIN

_TABLES: dict[int, dict[str, list[float]]] = {
    512: ASPECT_RATIO_512_BIN,
    1024: ASPECT_RATIO_1024_BIN,
    2048: ASPECT_RATIO_2048_BIN,
    4096: ASPECT_RATIO_4096_BIN,
}


def bin_table(resolution: int) -> dict[str, list[float]]:
    """The aspect-ratio table (ratio string → [height, width]) of a resolution class."""
    try:
        return _TABLES[resolution]
    except KeyError:
        raise ValueError(f"no aspect-ratio bins for resolution class {resolution}") from None


def resolution_for_sample_size(sample_size: int) -> int:
    """Resolution class of a transformer config's `sample_size` (latent side, 32x compression)."""
    resolution = sample_size * 32
    bin_table(resolution)
    return resolution


@cache
def _ratios(resolution: int) -> tuple[tuple[float, int, int], ...]:
    return tuple((float(r), int(hw[0]), int(hw[1])) for r, hw in bin_table(resolution).items())


def bin_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(bin_width, bin_height) for a requested size: the bin whose height/width ratio is closest.

    Ties go to the earlier table entry, as in diffusers.
    """
    aspect = float(height / width)
    _, bin_h, bin_w = min(_ratios(resolution), key=lambda entry: abs(entry[0] - aspect))
    return bin_w, bin_h


def preset_sizes(resolution: int, min_side: int, max_side: int, max_aspect_ratio: float) -> list[tuple[int, int]]:
    """One (width, height) per aspect-ratio bin of a resolution class, for a route that serves up
    to `max_side`: the bin itself when it fits, else the bin scaled down to `max_side` on its
    longer side (sides multiples of 32). Bins beyond the aspect limit or below `min_side` are left
    out. Ordered tallest to widest."""
    sizes: set[tuple[int, int]] = set()
    for _, height, width in _ratios(resolution):
        scale = min(1.0, max_side / max(width, height))
        width, height = (max(32, int(side * scale) // 32 * 32) for side in (width, height))
        if min(width, height) >= min_side and max(width, height) / min(width, height) <= max_aspect_ratio:
            sizes.add((width, height))
    return sorted(sizes, key=lambda wh: (wh[0] / wh[1], wh[0]))
