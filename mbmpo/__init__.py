"""mbmpo: model-based meta-policy optimization and the model-free baselines it is measured against.

The algorithm classes are imported lazily (PEP 562), so ``dynamics`` and ``policies`` can
import shared pieces such as ``mbmpo.normalization`` without an import cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

from mbmpo.errors import CheckpointError, ConfigError, MBMPOError, TrainingError

_LAZY = {
    "MBMPO": "mbmpo.mbmpo",
    "MBMPOConfig": "mbmpo.mbmpo",
    "PPO": "mbmpo.baselines.ppo",
    "PPOConfig": "mbmpo.baselines.ppo",
    "TRPO": "mbmpo.baselines.trpo",
    "TRPOConfig": "mbmpo.baselines.trpo",
    "DPPO": "mbmpo.baselines.dppo",
    "DPPOConfig": "mbmpo.baselines.dppo",
    "Gorila": "mbmpo.baselines.gorila",
    "GorilaConfig": "mbmpo.baselines.gorila",
    "SAC": "mbmpo.baselines.sac",
    "SACConfig": "mbmpo.baselines.sac",
    "BaseConfig": "mbmpo.config",
}

__all__ = ["ALGORITHMS", *_LAZY, "CheckpointError", "ConfigError", "MBMPOError", "TrainingError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "ALGORITHMS":
        return {"mbmpo": (__getattr__("MBMPO"), __getattr__("MBMPOConfig")),
                "ppo": (__getattr__("PPO"), __getattr__("PPOConfig")),
                "trpo": (__getattr__("TRPO"), __getattr__("TRPOConfig")),
                "dppo": (__getattr__("DPPO"), __getattr__("DPPOConfig")),
                "gorila": (__getattr__("Gorila"), __getattr__("GorilaConfig")),
                "sac": (__getattr__("SAC"), __getattr__("SACConfig"))}
    raise AttributeError(f"module 'mbmpo' has no attribute {name!r}")
