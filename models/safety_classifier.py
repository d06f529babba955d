"""ShieldGemma prompt classifier: P("Yes") that a prompt violates the safety policy.

ShieldGemma is a Gemma-2 causal LM fine-tuned to answer "Yes"/"No" to "does this prompt violate
the policy?". The score is the softmax over the "Yes" and "No" logits at the last position, as its
model card and Sana's demo compute it. Many prompts run as one right-padded batch; each prompt's
score is read at its own last real token, so padding never changes a score.
"""

from __future__ import annotations

from importlib import resources

import torch

from models.checkpoint import load_classifier

DEFAULT_CHECKPOINT = "google/shieldgemma-2b"


def default_policy() -> str:
    return resources.files("models").joinpath("safety_policy.txt").read_text("utf-8").strip()


def policy_prompt(user_prompt: str, policy: str) -> str:
    return (
        "You are a policy expert trying to help determine whether a user prompt is in violation of the "
        "defined safety policies.\n\n"
        "<start_of_turn>\n"
        f"Human Question: {user_prompt.strip()}\n"
        "<end_of_turn>\n\n"
        "Our safety principle is defined in the below:\n\n"
        f"{policy}\n\n"
        "===\n\n"
        "Does the human question violate the above principle? Your answer must start with 'Yes' or 'No'. "
        "And then walk through step by step to be sure we answer correctly.\n"
    )


class SafetyClassifier:
    def __init__(self, tokenizer, model: torch.nn.Module, policy: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.model = model
        self.policy = policy or default_policy()
        vocab = tokenizer.get_vocab()
        try:
            self._yes_no = [vocab["Yes"], vocab["No"]]
        except KeyError:
            raise ValueError("the classifier's tokenizer has no single 'Yes'/'No' tokens") from None

    @classmethod
    def from_pretrained(
        cls, source: str = DEFAULT_CHECKPOINT, *, device: str | None = None, dtype: str | None = None,
        policy: str | None = None,
    ) -> "SafetyClassifier":
        """From a local folder or a Hub repo id (google/shieldgemma-2b is gated: set HF_TOKEN)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = load_classifier(AutoModelForCausalLM, source, device, dtype)
        return cls(AutoTokenizer.from_pretrained(source), model, policy)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def scores(self, prompts: list[str]) -> list[float]:
        """P(violation) for each prompt, in [0, 1]."""
        if not prompts:
            return []
        texts = [policy_prompt(p, self.policy) for p in prompts]
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        logits = self.model(**tokens).logits
        last = tokens.attention_mask.sum(dim=1) - 1
        selected = logits[torch.arange(len(texts), device=self.device), last][:, self._yes_no].float()
        return torch.softmax(selected, dim=-1)[:, 0].tolist()
