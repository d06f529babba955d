"""The text side of the shapes model, trained with the transformer.

`TrainablePromptEncoder` gives the embeddings `models.text_encoder.TextEncoder` gives at serving
(lower-cased prompt after Sana's complex human instruction, BOS plus the last 299 positions),
with gradients. The instruction is the same ~1,060 byte tokens in front of every prompt, so it
runs once per step without gradients and its keys and values are shared by the batch; only the
prompt's own positions run with gradients, and only as far as the longest prompt of the batch:
padding positions are masked out of the transformer's cross-attention, so their values never
matter (they are zeros here). The values at the real positions equal a full pass (checked by
tests/unit/test_text_side.py); the gradient just does not flow into the instruction's positions.
"""

from __future__ import annotations

import inspect

import torch

from models.text_encoder import TextEncoder


class TrainablePromptEncoder:
    def __init__(self, tokenizer, model: torch.nn.Module, max_sequence_length: int = 300) -> None:
        # The serving encoder knows the instruction, lengths and the selected positions.
        self.serving = TextEncoder(tokenizer, model, cache_size=0, max_sequence_length=max_sequence_length)
        self.tokenizer, self.model = tokenizer, model
        self.max_sequence_length = max_sequence_length
        self._prefix = tokenizer(self.serving.instruction, add_special_tokens=True, return_tensors="pt").input_ids
        # transformers 5 renamed the forward's `past_key_values` to `cache`.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def encode(self, texts: list[str], *, with_instruction: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds [B, L, D], mask [B, L]) of preprocessed `texts`, L = max_sequence_length."""
        if not with_instruction:
            tokens = self.tokenizer(texts, padding="max_length", max_length=self.max_sequence_length,
                                    truncation=True, add_special_tokens=True, return_tensors="pt")
            real = _real_length(tokens.attention_mask)
            hidden = self.model(tokens.input_ids[:, :real], attention_mask=tokens.attention_mask[:, :real])[0]
            return _pad_to(hidden, self.max_sequence_length), tokens.attention_mask
        prefix_length = self._prefix.shape[1]
        tokens = self.tokenizer([self.serving.instruction + text for text in texts], padding="max_length",
                                max_length=self.serving.instruction_length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        # Byte-level tokens: the instruction's tokens are the same whatever follows them.
        assert torch.equal(tokens.input_ids[:, :prefix_length], self._prefix.expand(len(texts), -1))
        with torch.no_grad():
            prefix = self.model(self._prefix, use_cache=True)
        cache = prefix[self._cache_arg] if self._cache_arg in prefix else prefix.past_key_values
        for layer in cache.layers:  # one prefix for the whole batch
            layer.keys = layer.keys.expand(len(texts), -1, -1, -1).contiguous()
            layer.values = layer.values.expand(len(texts), -1, -1, -1).contiguous()
        real = _real_length(tokens.attention_mask[:, prefix_length:])
        rest = self.model(tokens.input_ids[:, prefix_length:prefix_length + real],
                          attention_mask=tokens.attention_mask[:, :prefix_length + real],
                          use_cache=True, **{self._cache_arg: cache})[0]
        rest = _pad_to(rest, tokens.input_ids.shape[1] - prefix_length)
        prefix_hidden = prefix[0].expand(len(texts), -1, -1)
        # BOS, the instruction's last position, then the prompt and padding: BOS plus the last L-1
        # positions of the full pass, as the serving encoder selects them.
        hidden = torch.cat([prefix_hidden[:, :1], prefix_hidden[:, -1:], rest], dim=1)
        mask = tokens.attention_mask[:, self.serving.selected_positions]
        return hidden[:, -self.max_sequence_length:], mask


def _real_length(mask: torch.Tensor) -> int:
    """Positions up to the last real token of any row (right padding)."""
    return max(1, int(mask.sum(dim=1).max()))


def _pad_to(hidden: torch.Tensor, length: int) -> torch.Tensor:
    """`hidden` [B, n, D] with zeros appended up to `length` positions."""
    missing = length - hidden.shape[1]
    return hidden if missing <= 0 else torch.nn.functional.pad(hidden, (0, 0, 0, missing))
