"""Text encoder stage: Gemma-2 prompt embeddings exactly as diffusers' SanaPipeline makes them.

Per prompt: lower-case and strip; positive prompts get Sana's complex human instruction (CHI)
prepended; tokenize right-padded to a fixed length, run Gemma-2, keep BOS plus the last
`max_sequence_length - 1` positions (Sana paper, Section 3.1). Many prompts run as one batch; an
LRU cache keyed by the preprocessed text returns the same tensors as a fresh encode.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from models.checkpoint import choose_placement, load_component, resolve_source

# Sana's default complex human instruction (NVlabs/Sana configs/sana_app_config, the default of
# SanaPipeline.__call__): it steers Gemma's hidden states towards detailed visual descriptions.
COMPLEX_HUMAN_INSTRUCTION: tuple[str, ...] = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
)

SUBFOLDERS = ("tokenizer", "text_encoder")


@dataclass(frozen=True)
class PromptEmbedding:
    """One prompt's encoder output: `embeds` [L, D] and `mask` [L] (1 = real token)."""

    embeds: torch.Tensor
    mask: torch.Tensor


def preprocess(prompt: str) -> str:
    # diffusers' _text_preprocessing with clean_caption=False.
    return prompt.lower().strip()


class PromptCache:
    """Thread-safe LRU of PromptEmbedding by (text, uses_instruction). Size 0 disables it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, bool], PromptEmbedding] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, bool]) -> PromptEmbedding | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: tuple[str, bool], value: PromptEmbedding) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class TextEncoder:
    """Gemma-2 prompt encoder with batching and an embedding cache."""

    def __init__(
        self,
        tokenizer,
        model: torch.nn.Module,
        *,
        cache_size: int = 1024,
        max_sequence_length: int = 300,
        complex_human_instruction: tuple[str, ...] = COMPLEX_HUMAN_INSTRUCTION,
    ) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"  # the selection below assumes right padding
        self.model = model
        self.max_sequence_length = max_sequence_length
        self.cache = PromptCache(cache_size)
        self._instruction = "\n".join(complex_human_instruction)
        # Room for the instruction's tokens (its BOS included) plus the prompt, as diffusers computes.
        if self._instruction:
            self._instruction_length = len(tokenizer.encode(self._instruction)) + max_sequence_length - 2
        # BOS, then the last L-1 positions: with the instruction in front, that is the user prompt.
        self._select = [0, *range(-max_sequence_length + 1, 0)]

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        cache_size: int = 1024,
        max_sequence_length: int = 300,
    ) -> "TextEncoder":
        from transformers import AutoTokenizer, Gemma2Model

        placement = choose_placement(source, device, dtype)
        folder = resolve_source(source, SUBFOLDERS, placement.weight_variant)
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        model = load_component(Gemma2Model, folder / "text_encoder", placement)
        return cls(tokenizer, model, cache_size=cache_size, max_sequence_length=max_sequence_length)

    @property
    def instruction(self) -> str:
        """The complex human instruction put in front of positive prompts ("" when off)."""
        return self._instruction

    @property
    def instruction_length(self) -> int:
        """Tokens a positive prompt is padded to: the instruction's, then room for the prompt."""
        return self._instruction_length

    @property
    def selected_positions(self) -> list[int]:
        """The positions kept of the encoder's output: BOS, then the last L-1."""
        return self._select

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, prompts: list[str], *, with_instruction: bool) -> list[PromptEmbedding]:
        """Embeddings of `prompts`, in order. Positive prompts use the instruction; negative ones don't."""
        keys = [(preprocess(p), with_instruction) for p in prompts]
        found: dict[tuple[str, bool], PromptEmbedding] = {}
        missing: list[tuple[str, bool]] = []
        for key in keys:
            if key in found or key in missing:
                continue
            cached = self.cache.get(key)
            if cached is None:
                missing.append(key)
            else:
                found[key] = cached
        if missing:
            fresh = self.encode_uncached([text for text, _ in missing], with_instruction)
            for key, embedding in zip(missing, fresh):
                self.cache.put(key, embedding)
                found[key] = embedding
        return [found[key] for key in keys]

    @torch.no_grad()
    def encode_uncached(self, texts: list[str], with_instruction: bool) -> list[PromptEmbedding]:
        """Encode preprocessed `texts` without touching the cache."""
        if with_instruction and self._instruction:
            texts = [self._instruction + text for text in texts]
            max_length = self._instruction_length
        else:
            max_length = self.max_sequence_length
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device)
        hidden = self.model(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        hidden = hidden[:, self._select]
        mask = mask[:, self._select]
        # Clones, so a cached prompt does not keep its whole batch's tensor alive.
        return [PromptEmbedding(embeds=hidden[i].clone(), mask=mask[i].clone()) for i in range(len(texts))]

