"""Flax BART with the transformers-4.x Flax API."""

from flax_bart.config import BartConfig, ConfigError

__all__ = ["BartConfig", "ConfigError"]
