"""Can the shapes model's text encoder tell words and roles apart? Cosine similarities of its features.

    python -m bench.shapes_text [--checkpoint DIR_OR_SPEC ...] [--out bench/results/shapes-text.json]

Each prompt is encoded as served (complex-human-instruction prefix, BOS + last 299 positions); a
word's feature is the final hidden state at its last byte (the tokenizer is byte-level). Reported:
- `colors_same_caption`: the two colour words of one caption ("red" vs "blue" in "a red star on a
  blue background");
- `role`: one colour word as the foreground ("a blue star") vs as the background ("a red star on a
  blue background");
- `colors_same_role`: two colour words in the same place ("a red star" vs "a blue star").
Each as the issue's single example (blue/red, star) and as the mean over the whole grammar. Lower
means the DiT gets more to tell them apart by; 1.0 is the same vector.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from train.shapes import COLORS, SHAPES


def _features(encoder, caption: str) -> dict[str, torch.Tensor]:
    """Feature at the last byte of each word of `caption` (keys: 'word@index')."""
    from models.text_encoder import preprocess

    text = preprocess(caption)
    embedding = encoder.encode_uncached([text], True)[0]
    # Selected positions: BOS, the instruction's last token, then the prompt's bytes.
    offset = 2
    assert len(text.encode("utf-8")) == len(text), "the grammar is ASCII: one byte, one token"
    features, position = {}, 0
    for index, word in enumerate(text.split(" ")):
        position = text.index(word, position)
        features[f"{word}@{index}"] = embedding.embeds[offset + position + len(word) - 1]
        position += len(word)
    return features


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def measure(checkpoint: str) -> dict:
    from models.text_encoder import TextEncoder
    from serve.checkpoint_specs import resolve_checkpoint

    encoder = TextEncoder.from_pretrained(resolve_checkpoint(checkpoint), device="cpu", cache_size=0)
    colors = list(COLORS)
    same_caption, role, same_role = [], [], []
    for shape in SHAPES:
        for fg, bg in itertools.permutations(colors, 2):
            both = _features(encoder, f"a {fg} {shape} on a {bg} background")
            alone = _features(encoder, f"a {bg} {shape}")
            other = _features(encoder, f"a {fg} {shape}")
            same_caption.append(_cos(both[f"{fg}@1"], both[f"{bg}@5"]))
            role.append(_cos(alone[f"{bg}@1"], both[f"{bg}@5"]))
            same_role.append(_cos(other[f"{fg}@1"], alone[f"{bg}@1"]))
    example = _features(encoder, "a red star on a blue background")
    blue_fg, red_fg = _features(encoder, "a blue star"), _features(encoder, "a red star")
    red_bg = _features(encoder, "a blue star on a red background")

    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 3)

    return {
        "checkpoint": checkpoint,
        "example": {
            "colors_same_caption (red vs blue in 'a red star on a blue background')":
                round(_cos(example["red@1"], example["blue@5"]), 3),
            "role blue ('a blue star' vs 'a red star on a blue background')":
                round(_cos(blue_fg["blue@1"], example["blue@5"]), 3),
            "role red ('a red star' vs 'a blue star on a red background')":
                round(_cos(red_fg["red@1"], red_bg["red@5"]), 3),
            "colors_same_role (red vs blue in 'a red star', 'a blue star')":
                round(_cos(red_fg["red@1"], blue_fg["blue@1"]), 3),
        },
        "grammar_mean": {"colors_same_caption": mean(same_caption), "role": mean(role),
                         "colors_same_role": mean(same_role)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append",
                        help="folder, repo id or materialized:NAME (repeatable; default materialized:shapes)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/shapes-text.json"))
    args = parser.parse_args()
    results = [measure(checkpoint) for checkpoint in args.checkpoint or ["materialized:shapes"]]
    for result in results:
        print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
