"""The shapes world: one flat shape on a plain background, its caption, and a pixel judge.

Grammar (exact; docs/models.md documents it):
    a {color} {shape}                             drawn on white (a white shape is drawn on black)
    a {color} {shape} on a {color} background     foreground and background always differ
colors: red, orange, yellow, green, blue, purple, black, white; shapes: circle, square, triangle,
star, heart. The article is always "a" ("a orange star"); a trailing "." is allowed and the text
encoder lower-cases, so "A red heart." (the safety replacement) is a sentence of this grammar.

Rendering is seeded numpy/Pillow: the shape is centred (a little jitter) and covers about half of
the shorter side. The judge reads a picture back: background colour from the border, foreground
colour from the pixels that differ from it, shape from the mask's fill ratio and corner count.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 220, 20),
    "green": (30, 160, 60),
    "blue": (30, 80, 225),
    "purple": (140, 50, 190),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle", "star", "heart")


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    background: str | None = None  # None: the caption names none (white, or black under white)

    @property
    def background_color(self) -> str:
        if self.background is not None:
            return self.background
        return "black" if self.color == "white" else "white"

    def caption(self) -> str:
        text = f"a {self.color} {self.shape}"
        return text if self.background is None else f"{text} on a {self.background} background"


def all_scenes(colors: tuple[str, ...] = tuple(COLORS), shapes: tuple[str, ...] = SHAPES) -> list[Scene]:
    scenes = []
    for color in colors:
        for shape in shapes:
            scenes.append(Scene(color, shape))
            scenes += [Scene(color, shape, bg) for bg in colors if bg != color]
    return scenes


def parse_caption(text: str) -> Scene | None:
    """The scene a caption of the grammar names (case, an "an", a final "." tolerated), else None."""
    words = text.strip().lower().rstrip(".").split()
    if len(words) not in (3, 7) or words[0] not in ("a", "an"):
        return None
    color, shape = words[1], words[2]
    if color not in COLORS or shape not in SHAPES:
        return None
    if len(words) == 3:
        return Scene(color, shape)
    if words[3:5] != ["on", "a"] and words[3:5] != ["on", "an"] or words[6] != "background":
        return None
    background = words[5]
    if background not in COLORS or background == color:
        return None
    return Scene(color, shape, background)


def random_scene(rng: random.Random, explicit_background: float = 0.5, colors: tuple[str, ...] = tuple(COLORS),
                 shapes: tuple[str, ...] = SHAPES) -> Scene:
    color, shape = rng.choice(colors), rng.choice(shapes)
    if rng.random() < explicit_background:
        return Scene(color, shape, rng.choice([c for c in colors if c != color]))
    return Scene(color, shape)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.9
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a) + 0.2 * r)
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    if shape == "heart":
        points = []
        for k in range(120):
            t = 2 * math.pi * k / 120
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((cx + r * x / 17, cy - r * (y + 2) / 17))
        return points
    raise ValueError(shape)


def render(scene: Scene, width: int, height: int, rng: random.Random | None = None) -> np.ndarray:
    """uint8 [height, width, 3]: the scene, centred with a little jitter in place and size."""
    rng = rng or random.Random(0)
    side = min(width, height)
    r = side * rng.uniform(0.24, 0.32)
    cx = width / 2 + rng.uniform(-0.05, 0.05) * side
    cy = height / 2 + rng.uniform(-0.05, 0.05) * side
    image = Image.new("RGB", (width, height), COLORS[scene.background_color])
    draw = ImageDraw.Draw(image)
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r), fill=fill)
    return np.asarray(image)


# --- the judge --------------------------------------------------------------------------------

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_NAMES = list(COLORS)


def _nearest_index(pixels: np.ndarray) -> np.ndarray:
    distances = ((pixels[..., None, :].astype(np.float32) - _PALETTE) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1)


@dataclass(frozen=True)
class Judgement:
    background: str
    color: str | None  # None: no foreground found
    shape: str | None


def judge(image: np.ndarray, size: int = 128) -> Judgement:
    """Read a picture of the shapes world back.

    The picture is resized to `size` on its shorter side. Background: the palette colour most of
    the border pixels are nearest to. Foreground: the commonest nearest colour among the pixels
    not nearest to the background. Shape: from the foreground mask's fill ratio (area over the
    bounding box's) and its outline's corner count."""
    pil = Image.fromarray(image)
    scale = size / min(pil.size)
    pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BILINEAR)
    pixels = np.asarray(pil)
    labels = _nearest_index(pixels)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    mask = labels != background
    if mask.sum() < 0.01 * mask.size:
        return Judgement(_NAMES[background], None, None)
    color = int(np.bincount(labels[mask], minlength=len(_NAMES)).argmax())
    return Judgement(_NAMES[background], _NAMES[color], _shape_of(labels == color))


def _shape_of(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = mask.sum() / float(h * w)
    top = mask[ys.min(): ys.min() + max(1, h // 8), xs.min(): xs.max() + 1]
    top_fill = top.mean()
    # Reference fills of the ideal shapes: square 1.0, circle 0.785, heart ~0.68 (with a notch on
    # top), triangle 0.5, star ~0.45 (its top row is a narrow point, like the triangle's).
    if fill > 0.9:
        return "square"
    if fill > 0.72:
        return "circle"
    if fill > 0.58:
        return "heart"
    # Triangle vs star: a star's side points reach the bounding box's left and right edges a third
    # of the way down, a triangle's only at the bottom.
    row = mask[ys.min() + int(0.38 * h), xs.min(): xs.max() + 1]
    return "star" if row.mean() > 0.8 and top_fill < 0.3 else "triangle"
