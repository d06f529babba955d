"""Typed errors of the stage library. `serve/` maps each to an HTTP status in one place."""

from __future__ import annotations


class SanaError(Exception):
    """Base of every error this library raises on purpose."""


class UnknownVariantError(SanaError, ValueError):
    """An architecture or variant name that is not in the registry."""


class CheckpointError(SanaError):
    """A checkpoint folder or repo is missing, incomplete or unreadable."""


class MaterializeError(SanaError):
    """`materialize` cannot write the requested checkpoint."""


class InvalidRequestError(SanaError, ValueError):
    """A generation request the stages cannot run (bad size, steps, guidance...).

    `field` names the offending request field so the gateway can report it.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AdapterError(SanaError):
    """A LoRA adapter cannot be loaded (not a LoRA file, another architecture's, unreachable)."""
