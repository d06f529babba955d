"""The training-time prompt encoder gives the served encoder's embeddings, with gradients."""

from __future__ import annotations

import pytest
import torch

from models.registry import PACKAGED_DIR
from models.text_encoder import TextEncoder, preprocess
from train.text_side import TrainablePromptEncoder

PROMPTS = ["A red heart.", "a blue star on a yellow background", "a white circle"]


@pytest.fixture(scope="module")
def served():
    return TextEncoder.from_pretrained(str(PACKAGED_DIR / "sana-shapes"), device="cpu", cache_size=0)


@pytest.mark.parametrize("with_instruction", [True, False])
def test_it_equals_the_served_encoding(served, with_instruction):
    texts = [preprocess(p) for p in PROMPTS]
    expected = served.encode_uncached(texts, with_instruction)
    embeds, mask = TrainablePromptEncoder(served.tokenizer, served.model).encode(texts,
                                                                                 with_instruction=with_instruction)
    for i, reference in enumerate(expected):
        assert torch.equal(mask[i], reference.mask)
        real = reference.mask.bool()
        torch.testing.assert_close(embeds[i][real], reference.embeds[real], rtol=0, atol=1e-5)


def test_gradients_reach_the_encoders_weights(served):
    import copy

    model = copy.deepcopy(served.model).requires_grad_(True)
    embeds, mask = TrainablePromptEncoder(served.tokenizer, model).encode(["a red heart"], with_instruction=True)
    (embeds * mask[..., None]).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["embed_tokens.weight"] is not None and grads["embed_tokens.weight"].abs().sum() > 0
    assert all(g is not None for name, g in grads.items() if "layers.1." in name)
