"""Decoder stage: DC-AE latents → uint8 pixels at the requested size.

Large outputs decode in overlapping tiles (1024 px tiles, stride 896, blended over the 128 px
overlap) because an untiled 4K DC-AE decode needs more memory than an 80 GB card has
(NVlabs/Sana#139); 512 px tiles leave visible seams at 4K. After decoding, the bin-sized image is
resized and center-cropped to the requested size and quantized as diffusers does
(`(x/2 + 0.5).clamp(0, 1) * 255`, rounded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.image_processor import PixArtImageProcessor

from models.checkpoint import choose_placement, load_component, resolve_source

SUBFOLDERS = ("vae",)


@dataclass(frozen=True)
class TilingConfig:
    """When and how to tile. `above`: tile when the decoded image is larger than this on a side."""

    above: int = 2048
    tile: int = 1024
    stride: int = 896

    def __post_init__(self) -> None:
        if not 0 < self.stride <= self.tile or self.tile % 32 or self.stride % 32:
            raise ValueError("tile and stride must be positive multiples of 32 with stride <= tile")


class Decoder:
    """DC-AE decode with optional tiling, resize-and-crop and uint8 conversion."""

    def __init__(self, vae: torch.nn.Module, tiling: TilingConfig | None = None) -> None:
        self.vae = vae
        self.tiling = tiling or TilingConfig()
        # Tile geometry lives on the module; it only takes effect when we call tiled_decode
        # ourselves, so concurrent untiled decodes are unaffected (use_tiling stays False).
        vae.tile_sample_min_height = vae.tile_sample_min_width = self.tiling.tile
        vae.tile_sample_stride_height = vae.tile_sample_stride_width = self.tiling.stride
        self.scaling_factor = float(vae.config.scaling_factor)

    @classmethod
    def from_pretrained(
        cls, source: str, *, device: str | None = None, dtype: str | None = None, tiling: TilingConfig | None = None
    ) -> "Decoder":
        from diffusers import AutoencoderDC

        placement = choose_placement(source, device, dtype)
        folder = resolve_source(source, SUBFOLDERS, placement.weight_variant)
        return cls(load_component(AutoencoderDC, folder / "vae", placement), tiling)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def uses_tiling(self, latents: torch.Tensor) -> bool:
        side = max(latents.shape[-2:]) * 32
        return side > self.tiling.above

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, width: int, height: int, *, tiled: bool | None = None
    ) -> np.ndarray:
        """uint8 images [n, height, width, 3] from latents [n, C, h, w].

        `tiled` forces tiling on or off; by default it is on for outputs above `tiling.above`.
        """
        z = latents.to(device=self.device, dtype=self.vae.dtype) / self.scaling_factor
        use_tiles = self.uses_tiling(latents) if tiled is None else tiled
        image = self.vae.tiled_decode(z, return_dict=False)[0] if use_tiles else self.vae.decode(z, return_dict=False)[0]
        if image.shape[-2:] != (height, width):
            image = PixArtImageProcessor.resize_and_crop_tensor(image, width, height)
        return to_uint8(image)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[n, 3, H, W] in [-1, 1] → uint8 [n, H, W, 3], rounding exactly as diffusers' numpy_to_pil."""
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu()
    return (image * 255).round().to(torch.uint8).numpy()
