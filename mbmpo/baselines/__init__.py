"""Model-free baselines built on the shared on-policy loop."""

from mbmpo.baselines.ppo import PPO, PPOConfig
from mbmpo.baselines.trpo import TRPO, TRPOConfig

__all__ = ["PPO", "PPOConfig", "TRPO", "TRPOConfig"]
