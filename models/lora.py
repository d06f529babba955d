"""LoRA adapters on the Sana transformer, loaded by name and switched per batch.

Adapters go in through diffusers' own loader (`SanaPipeline.lora_state_dict` then
`load_lora_into_transformer`, the path `pipe.load_lora_weights` takes), as PEFT layers beside the
base weights, never merged into them. A batch runs with one adapter at one scale active
(`set_adapters`) or with all of them disabled, in which case every PEFT layer computes exactly its
base layer: adapters cannot leak into requests that did not ask for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from models.errors import AdapterError

ADAPTER_FILE = "pytorch_lora_weights.safetensors"


def resolve_adapter(source: str) -> Path:
    """A local folder holding the adapter file, or a Hub repo id (only its *.safetensors fetched)."""
    folder = Path(source)
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=["*.safetensors"]))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, no access: one clear error
        raise AdapterError(f"adapter source {source!r} is not a folder and cannot be fetched: {exc}") from exc


class Adapters:
    """The LoRA adapters loaded into one transformer, by name."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer
        self.loaded: dict[str, str] = {}  # name -> source

    def load(self, name: str, source: str) -> None:
        """Load `source` as adapter `name` (no-op when loaded). A file that is not a LoRA, or one for
        another architecture, raises AdapterError and leaves the transformer as it was."""
        if name in self.loaded:
            return
        from diffusers import SanaPipeline

        folder = resolve_adapter(source)
        try:
            state, metadata = SanaPipeline.lora_state_dict(folder, return_lora_metadata=True)
            if not state or not all("lora" in key for key in state):
                raise ValueError("not a LoRA state dict (every key must name a lora_A/lora_B weight)")
            SanaPipeline.load_lora_into_transformer(state, self.transformer, adapter_name=name, metadata=metadata)
        except Exception as exc:  # noqa: BLE001 - any loader failure is the adapter's, reported by name
            self._forget(name)
            raise AdapterError(f"adapter {name!r} ({source}) could not be loaded: {exc}") from exc
        self.loaded[name] = source

    def unload(self, name: str) -> None:
        if self.loaded.pop(name, None) is not None:
            self._forget(name)

    def _forget(self, name: str) -> None:
        # A failed load may have injected layers already; drop whatever carries the name.
        config = getattr(self.transformer, "peft_config", None) or {}
        if name in config:
            self.transformer.delete_adapters(name)

    @contextmanager
    def active(self, name: str | None, scale: float = 1.0) -> Iterator[None]:
        """Run the block with adapter `name` at `scale`, or with none (every adapter disabled)."""
        if name is None:
            if self.loaded:
                self.transformer.disable_lora()
            yield
            return
        if name not in self.loaded:
            raise AdapterError(f"adapter {name!r} is not loaded")
        self.transformer.enable_lora()
        self.transformer.set_adapters([name], weights=[scale])
        yield
