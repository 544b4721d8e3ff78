"""mbmpo: model-based meta-policy optimization and the model-free baselines it is measured against."""

from mbmpo.baselines import PPO, TRPO, PPOConfig, TRPOConfig
from mbmpo.config import BaseConfig
from mbmpo.errors import CheckpointError, ConfigError, MBMPOError, TrainingError
from mbmpo.mbmpo import MBMPO, MBMPOConfig

ALGORITHMS = {"mbmpo": (MBMPO, MBMPOConfig), "ppo": (PPO, PPOConfig), "trpo": (TRPO, TRPOConfig)}

__all__ = [
    "ALGORITHMS",
    "MBMPO",
    "MBMPOConfig",
    "PPO",
    "TRPO",
    "BaseConfig",
    "CheckpointError",
    "ConfigError",
    "MBMPOError",
    "PPOConfig",
    "TRPOConfig",
    "TrainingError",
]
__version__ = "0.1.0"
