"""Image safety check: P(unsafe) for each decoded picture, from a published image classifier.

The default is `Falconsai/nsfw_image_detection`, a ViT-B/16 fine-tuned to tell `normal` from
`nsfw` (Apache-2.0, 86M parameters). Chosen over diffusers' CLIP-based
`StableDiffusionSafetyChecker` because it answers a probability that one configured threshold
applies to (the CLIP checker compares against hidden per-concept thresholds and answers yes/no),
at a quarter of the size (ViT-B/16 at 224px against CLIP ViT-L/14). Any transformers image
classifier works: the score is the summed softmax probability of its labels named unsafe.

Images are batched as one tensor; the processor resizes each to the model's input (224px), so a
4K picture costs about what a 512px one does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.checkpoint import load_classifier

DEFAULT_CHECKPOINT = "Falconsai/nsfw_image_detection"
DEFAULT_UNSAFE_LABELS = ("nsfw",)


class ImageChecker:
    def __init__(self, processor, model: torch.nn.Module, unsafe_labels: Sequence[str] = DEFAULT_UNSAFE_LABELS) -> None:
        self.processor = processor
        self.model = model
        labels = {str(label).lower(): int(index) for index, label in model.config.id2label.items()}
        wanted = [label.lower() for label in unsafe_labels]
        missing = [label for label in wanted if label not in labels]
        if missing or not wanted:
            raise ValueError(f"the image checker has no label(s) {missing or wanted}; its labels: {sorted(labels)}")
        self._unsafe = [labels[label] for label in wanted]

    @classmethod
    def from_pretrained(
        cls, source: str = DEFAULT_CHECKPOINT, *, device: str | None = None, dtype: str | None = None,
        unsafe_labels: Sequence[str] = DEFAULT_UNSAFE_LABELS,
    ) -> ImageChecker:
        """From a local folder or a Hub repo id (an image-classification model and its processor)."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model = load_classifier(AutoModelForImageClassification, source, device, dtype)
        return cls(AutoImageProcessor.from_pretrained(source, use_fast=False), model, unsafe_labels)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def scores(self, images: Sequence[np.ndarray]) -> list[float]:
        """P(unsafe) in [0, 1] for each uint8 image [H, W, 3]."""
        if not len(images):
            return []
        inputs = self.processor(images=list(images), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
        logits = self.model(pixel_values=pixels).logits.float()
        return torch.softmax(logits, dim=-1)[:, self._unsafe].sum(dim=-1).clamp(0.0, 1.0).tolist()
