"""Model-free baselines: PPO and TRPO on the shared on-policy loop; Gorila (distributed DQN, Ray)."""

from mbmpo.baselines.gorila import Gorila, GorilaConfig
from mbmpo.baselines.ppo import PPO, PPOConfig
from mbmpo.baselines.trpo import TRPO, TRPOConfig

__all__ = ["Gorila", "GorilaConfig", "PPO", "PPOConfig", "TRPO", "TRPOConfig"]
