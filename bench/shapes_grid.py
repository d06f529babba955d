"""A grid of served pictures with their prompts as captions, from a running server.

    sana-serve run &                      # the embedded default
    python -m bench.shapes_grid --url http://127.0.0.1:8000 --out docs/shapes-grid.png

Sends one request per prompt below (loopback only, as every load in bench/), lays the pictures out
in rows with each prompt under its picture, and writes a PNG.
"""

from __future__ import annotations

import argparse
import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from bench.load import check_loopback

PROMPTS = [
    ("a red heart", "512x512"),
    ("a blue star on a yellow background", "512x512"),
    ("a green triangle", "512x512"),
    ("a white circle", "512x512"),
    ("a purple square on a orange background", "512x512"),
    ("a yellow star on a black background", "768x512"),
    ("a orange circle on a blue background", "768x512"),
    ("a black heart on a green background", "512x768"),
]
TILE = 256
CAPTION = 34


def fetch(url: str, prompt: str, size: str, seed: int) -> Image.Image:
    response = httpx.post(f"{url}/v1/images/generations", json={"prompt": prompt, "size": size, "seed": seed},
                          timeout=300)
    response.raise_for_status()
    return Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("docs/shapes-grid.png"))
    args = parser.parse_args()
    check_loopback(args.url)
    with ThreadPoolExecutor(4) as pool:
        pictures = list(pool.map(lambda item: fetch(args.url, item[0], item[1], args.seed), PROMPTS))
    rows = (len(PROMPTS) + args.columns - 1) // args.columns
    grid = Image.new("RGB", (args.columns * TILE, rows * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(grid)
    for index, ((prompt, size), picture) in enumerate(zip(PROMPTS, pictures)):
        x, y = (index % args.columns) * TILE, (index // args.columns) * (TILE + CAPTION)
        picture.thumbnail((TILE - 8, TILE - 8))
        grid.paste(picture, (x + (TILE - picture.width) // 2, y + (TILE - picture.height) // 2))
        draw.text((x + 6, y + TILE + 2), prompt, fill="black")
        draw.text((x + 6, y + TILE + 16), size, fill="gray")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
