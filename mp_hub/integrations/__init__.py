"""Integrations with training frameworks. `MetaPerturbCallback` needs transformers (a dependency anyway)."""

from .trainer import MetaPerturbCallback

__all__ = ["MetaPerturbCallback"]
