"""Decoder stage: DC-AE latents → uint8 pixels at the requested size.

Large outputs decode in overlapping tiles (1024 px tiles, stride 896, blended with linear ramps
over the 128 px overlap) because an untiled 4K DC-AE decode needs more memory than an 80 GB card has
(NVlabs/Sana#139); 512 px tiles leave visible seams at 4K. Tiles are accumulated into one output
buffer as they are decoded, so peak memory is one tile's activations plus the image (diffusers'
own tiled_decode keeps every decoded tile alive until the end). After decoding, the bin-sized image is
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
        image = self._tiled_decode(z) if use_tiles else self.vae.decode(z, return_dict=False)[0]
        if image.shape[-2:] != (height, width):
            image = PixArtImageProcessor.resize_and_crop_tensor(image, width, height)
        return to_uint8(image)

    @torch.no_grad()
    def preview(self, latents: torch.Tensor, width: int, height: int, max_side: int) -> np.ndarray:
        """A quick look at latents: uint8 images whose longer side is at most `max_side`, with the
        aspect of width x height. The latents are area-downsampled first so the VAE runs on a small
        grid (a 4K preview costs about what a 512 px decode does), never tiled."""
        scale = min(1.0, max_side / max(width, height))
        out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
        grid = (max(1, -(-out_h // 32)), max(1, -(-out_w // 32)))
        z = latents.to(device=self.device, dtype=torch.float32)
        if tuple(z.shape[-2:]) != grid and z.shape[-2] > grid[0]:
            z = torch.nn.functional.interpolate(z, size=grid, mode="area")
        image = self.vae.decode((z / self.scaling_factor).to(self.vae.dtype), return_dict=False)[0]
        image = PixArtImageProcessor.resize_and_crop_tensor(image.float(), out_w, out_h)
        return to_uint8(image)

    def _tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        tile, stride = self.tiling.tile // 32, self.tiling.stride // 32
        n, _, h, w = z.shape
        out = torch.zeros(n, 3, h * 32, w * 32, device=z.device, dtype=torch.float32)
        weight = torch.zeros(1, 1, h * 32, w * 32, device=z.device, dtype=torch.float32)
        rows, cols = _tile_starts(h, tile, stride), _tile_starts(w, tile, stride)
        for top in rows:
            for left in cols:
                piece = self.vae.decoder(z[:, :, top : top + tile, left : left + tile]).float()
                ramp = _ramp(piece.shape[-2], top > 0, top + tile < h, self.tiling, z.device)[:, None]
                ramp = ramp * _ramp(piece.shape[-1], left > 0, left + tile < w, self.tiling, z.device)[None, :]
                y, x = top * 32, left * 32
                out[:, :, y : y + piece.shape[-2], x : x + piece.shape[-1]] += piece * ramp
                weight[:, :, y : y + piece.shape[-2], x : x + piece.shape[-1]] += ramp
        return out / weight


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets (latent pixels) covering `length`, the last tile flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _ramp(size: int, fade_in: bool, fade_out: bool, tiling: TilingConfig, device: torch.device) -> torch.Tensor:
    """Per-pixel tile weight along one axis: linear ramps over the overlap on shared edges."""
    weights = torch.ones(size, device=device)
    overlap = min(tiling.tile - tiling.stride, size)
    if overlap > 0:
        ramp = (torch.arange(overlap, device=device, dtype=torch.float32) + 0.5) / overlap
        if fade_in:
            weights[:overlap] = ramp
        if fade_out:
            weights[-overlap:] = torch.minimum(weights[-overlap:], ramp.flip(0))
    return weights


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[n, 3, H, W] in [-1, 1] → uint8 [n, H, W, 3], rounding exactly as diffusers' numpy_to_pil."""
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu()
    return (image * 255).round().to(torch.uint8).numpy()
