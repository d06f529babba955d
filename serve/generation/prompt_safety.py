"""The prompt's safety layers: blocklisted words become ❤️, and the optional classifier replaces
an unsafe prompt, in parallel with encoding it."""

from __future__ import annotations

import asyncio
from typing import Any

from serve.config import AppConfig
from serve.gate.word_filter import WordFilter
from serve.generation.events import Progress, cancel_call
from serve.generation.handles import StageHandles
from serve.metrics import GatewayMetrics


class PromptSafety:
    def __init__(self, config: AppConfig, stages: StageHandles, metrics: GatewayMetrics) -> None:
        self.config, self.stages, self.metrics = config, stages, metrics
        words = config.safety.word_filter
        self.word_filter = (
            WordFilter.from_lists(words.use_default_list, words.extra_words, list(words.extra_files))
            if words.enabled else None
        )

    async def filter_words(self, prompt: str, negative: str) -> tuple[str, str]:
        """Blocklisted words → ❤️ in both prompts (in a thread: long prompts take a while)."""
        if self.word_filter is None:
            return prompt, negative
        (prompt, hits), (negative, negative_hits) = await asyncio.to_thread(
            lambda: (self.word_filter.apply(prompt), self.word_filter.apply(negative))
        )
        if hits or negative_hits:
            self.metrics.safety_replacement("word_filter")
        return prompt, negative

    async def screen_and_encode(self, prompt: str, progress: Progress) -> tuple[str, Any]:
        """(prompt to generate, its encoding). The classifier runs in parallel with the encoding of
        the prompt, so a safe prompt costs no classifier latency in series; a flagged one is
        replaced and re-encoded."""
        encoded = self.stages.text_encoder.encode.remote(prompt, True)
        if self.stages.classifier is None:
            return prompt, encoded
        settings = self.config.safety.classifier
        score = await progress.result(progress.track(self.stages.classifier.score.remote(prompt)))
        if score <= settings.threshold:
            return prompt, encoded
        self.metrics.safety_replacement("classifier")
        cancel_call(encoded)
        return settings.replacement, self.stages.text_encoder.encode.remote(settings.replacement, True)
