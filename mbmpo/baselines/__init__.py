"""Model-free baselines: PPO and TRPO on the shared on-policy loop; SAC (off-policy); Gorila
(distributed DQN, Ray)."""

from mbmpo.baselines.gorila import Gorila, GorilaConfig
from mbmpo.baselines.ppo import PPO, PPOConfig
from mbmpo.baselines.sac import SAC, SACConfig
from mbmpo.baselines.trpo import TRPO, TRPOConfig

__all__ = ["Gorila", "GorilaConfig", "PPO", "PPOConfig", "SAC", "SACConfig", "TRPO", "TRPOConfig"]
