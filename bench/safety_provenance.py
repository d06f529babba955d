"""What the output-safety and provenance layers cost per image, and how robust the watermark is.

    python -m bench.safety_provenance [--repeats 7] [--out bench/results/safety_provenance.json]

Each cost is measured interleaved, round by round, with the PNG encoding of the same image (which
every request already pays on the gateway) as the baseline; medians and [min, max] over rounds.
- image check: the default checker's architecture (ViT-B/16 at 224 px, as Falconsai/
  nsfw_image_detection; random weights, since compute does not depend on them) through our
  `models.image_checker.ImageChecker` with its processor, for 1 and 8 images of 1024 px;
- watermark: `serve.output.watermark.Watermark.embed` (invisible-watermark's DWT-DCT-SVD, vectorized), and
  the library's own encoder, 1024 px;
- C2PA: signing an encoded 1024 px PNG (`serve.output.content_credentials`, a throwaway ES256 identity).
Distortion: PSNR and the largest change of any pixel, ours against the library's encoder.
Robustness: the watermark read back (detected = fewer than one chance in a million that an unmarked
image matches as many bits) from 1024 px images, flat ones from the shapes world and the same with
photo-like texture, after: nothing, JPEG re-encode at 95/75/50, a 0.5x resize read as is, the same
resized back to 1024 first (`verify-watermark --size`), and a 10% crop.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from serve.output.encoding import encode_image
from serve.output.watermark import Watermark, detected, matching_bits, read_watermark

SIDE = 1024
PAYLOAD = "sana-gen"
CAPTIONS = ["a blue star on a yellow background", "a red heart", "a green circle on a purple background",
            "a orange triangle on a black background", "a white square on a blue background", "a purple star"]


def _pictures() -> dict[str, list[np.ndarray]]:
    from train.shapes import parse_caption, render

    flat = [np.asarray(render(parse_caption(c), SIDE, SIDE, random.Random(i))) for i, c in enumerate(CAPTIONS)]
    rng = np.random.default_rng(0)
    textured = []
    for picture in flat:
        # Photo-like: soft edges, grain, and a light gradient instead of flat, saturated colour.
        soft = np.asarray(Image.fromarray(picture).filter(ImageFilter.GaussianBlur(6)), np.float32)
        gradient = np.linspace(-25, 25, SIDE, dtype=np.float32)[None, :, None]
        grain = rng.normal(0, 10, picture.shape).astype(np.float32)
        textured.append(np.clip(soft * 0.85 + 20 + gradient + grain, 0, 255).astype(np.uint8))
    return {"flat": flat, "textured": textured}


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def _checker():
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from models.image_checker import ImageChecker

    config = ViTConfig(id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1})  # ViT-B/16, 224 px
    processor = ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return ImageChecker(processor, ViTForImageClassification(config).eval())


def _library_embed(picture: np.ndarray) -> np.ndarray:
    """invisible-watermark's own encoder, for comparison (the same bits; its pixel bugs included)."""
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", PAYLOAD.encode())
    return encoder.encode(np.ascontiguousarray(picture[..., ::-1]), "dwtDctSvd")


def _signer():
    from serve.config import C2paConfig
    from serve.output.content_credentials import ContentCredentials
    from tests.c2pa_certs import make_signing_files

    files = make_signing_files(Path(tempfile.mkdtemp()))
    return ContentCredentials(C2paConfig(certificate_chain_file=str(files.certificate_chain_file),
                                         private_key_file=str(files.private_key_file)))


def costs(pictures: list[np.ndarray], repeats: int) -> dict:
    import torch

    checker, signer, mark = _checker(), _signer(), Watermark(PAYLOAD)
    picture = pictures[0]
    png = encode_image(picture, "png")
    batch = np.stack(pictures[:4] * 2)
    systems: dict[str, Callable[[], object]] = {
        "png_encode": lambda: encode_image(picture, "png"),
        "image_check_1": lambda: checker.scores([picture]),
        "image_check_8": lambda: checker.scores(list(batch)),
        "watermark_embed": lambda: mark.embed(picture),
        "watermark_embed_library": lambda: _library_embed(picture),
        "c2pa_sign_png": lambda: signer.sign(png, "png"),
    }
    for run in systems.values():  # warm-up: imports, first-call kernel choices
        run()
    times: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(repeats):
        for name, run in systems.items():
            times[name].append(_timed(run))
    per_image = {name: [t / 8 for t in values] if name == "image_check_8" else values for name, values in times.items()}
    base = statistics.median(times["png_encode"])
    return {
        "torch_threads": torch.get_num_threads(),
        "ms_per_image": {name: _summary(values) for name, values in per_image.items()},
        "ratio_to_png_encode": {name: round(statistics.median(values) / base, 2)
                                for name, values in per_image.items() if name != "png_encode"},
    }


def _attacks() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    def jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
        def attack(pixels: np.ndarray) -> np.ndarray:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
            return np.asarray(Image.open(buffer).convert("RGB"))
        return attack

    def half(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(pixels).resize((SIDE // 2, SIDE // 2), Image.Resampling.BICUBIC))

    def half_then_back(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(half(pixels)).resize((SIDE, SIDE), Image.Resampling.BICUBIC))

    def crop(pixels: np.ndarray) -> np.ndarray:
        margin = SIDE // 20
        return pixels[margin:-margin, margin:-margin]

    return {"none": lambda p: p, "jpeg_95": jpeg(95), "jpeg_75": jpeg(75), "jpeg_50": jpeg(50),
            "resize_0.5x": half, "resize_0.5x_read_at_1024": half_then_back, "crop_10pct": crop}


def _psnr(marked: np.ndarray, original: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((marked.astype(np.float64) - original) ** 2)))


def _distortion(encode: Callable[[np.ndarray], np.ndarray], pictures: dict[str, list[np.ndarray]]) -> dict:
    """Mean PSNR (dB) and the largest change of any pixel channel, per kind of picture."""
    out = {}
    for kind, group in pictures.items():
        marked = [encode(p) for p in group]
        out[kind] = {"psnr_db": round(statistics.mean(_psnr(m, p) for m, p in zip(marked, group)), 1),
                     "max_change": int(max(np.abs(m.astype(int) - p).max() for m, p in zip(marked, group)))}
    return out


def robustness(pictures: dict[str, list[np.ndarray]]) -> dict:
    mark, expected = Watermark(PAYLOAD), PAYLOAD.encode()
    marked = {kind: [mark.embed(p) for p in group] for kind, group in pictures.items()}
    psnr = {kind: round(statistics.mean(_psnr(m, p) for m, p in zip(marked[kind], group)), 1)
            for kind, group in pictures.items()}
    table = {}
    for name, attack in _attacks().items():
        row = {}
        for kind, group in marked.items():
            found = [read_watermark(attack(p), len(expected)) for p in group]
            row[kind] = {"detected": f"{sum(detected(f, expected) for f in found)}/{len(found)}",
                         "bit_accuracy": round(statistics.mean(matching_bits(f, expected) for f in found)
                                               / (8 * len(expected)), 3)}
        table[name] = row
    unmarked = [read_watermark(p, len(expected)) for group in pictures.values() for p in group]
    # The library's own encoder on the same pictures: its uint8 wraparound and swapped details.
    library = _distortion(lambda p: _library_embed(p)[..., ::-1], pictures)
    return {"psnr_db": psnr, "distortion": {"ours": _distortion(mark.embed, pictures), "library": library},
            "attacks": table,
            "false_detections_on_unmarked": f"{sum(detected(f, expected) for f in unmarked)}/{len(unmarked)}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results/safety_provenance.json"))
    args = parser.parse_args(argv)
    pictures = _pictures()
    result = {"side": SIDE, "payload_bytes": len(PAYLOAD), "repeats": args.repeats,
              "costs": costs(pictures["textured"], args.repeats), "watermark_robustness": robustness(pictures)}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
