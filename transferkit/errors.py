"""Domain exceptions. The library raises these; the CLI turns them into one clear line.

Every message should name the input, say what was expected, and say how to fix it.
"""

from __future__ import annotations

__all__ = [
    "TransferKitError",
    "ConfigError",
    "DataError",
    "UnknownNameError",
    "StrategyError",
    "CheckpointError",
]


class TransferKitError(Exception):
    """Base class of every error transferkit raises on purpose."""


class ConfigError(TransferKitError):
    """A configuration value or file is invalid."""


class DataError(TransferKitError):
    """An image, folder or dataset cannot be used as given."""


class UnknownNameError(TransferKitError, KeyError):
    """A registry lookup failed (backbone, strategy, head ...)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StrategyError(TransferKitError):
    """A training strategy or its options are inconsistent."""


class CheckpointError(TransferKitError):
    """A model or checkpoint file cannot be read or written safely."""
