"""Error types raised for bad input. Each message is one line naming the bad value."""

from __future__ import annotations


class MBMPOError(Exception):
    """Base class; scripts print ``error: <message>`` and exit with status 2."""


class ConfigError(MBMPOError, ValueError):
    """An unknown key, an out-of-range value or an unsupported env/space."""


class CheckpointError(MBMPOError):
    """A missing, corrupt or mismatched checkpoint."""


class TrainingError(MBMPOError, FloatingPointError):
    """Training produced NaN/inf; the last good checkpoint on disk is left intact."""
