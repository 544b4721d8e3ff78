"""Rollout storage for on-policy algorithms."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Rollout:
    """``T`` steps of ``N`` parallel envs, time-major.

    Attributes:
        obs: ``[T, N, obs_dim]`` observations the actions were taken in.
        actions: ``[T, N, act_dim]`` raw (unclipped) samples, or ``[T, N]`` for Discrete.
        rewards, terminated, truncated: ``[T, N]``.
        next_obs: ``[T, N, obs_dim]`` observation after each step (the final one at an
            episode end), for bootstrapping and for dynamics-model targets.
        timesteps: ``[T, N]`` step index within the episode (for time features).
        extras: per-step outputs of the policy function, e.g. ``log_prob``/``value`` ``[T, N]``.
        episode_returns, episode_lengths: raw returns and lengths of episodes that ended.
        last_obs, last_timesteps: where the next ``collect`` call continues.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    next_obs: Tensor
    timesteps: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    last_obs: Tensor | None = None
    last_timesteps: Tensor | None = None

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_envs(self) -> int:
        return self.rewards.shape[1]

    def flat(self, name: str) -> Tensor:
        """A field (or extra) with ``[T, N]`` merged into ``[T * N]``."""
        x = self.extras[name] if name in self.extras else getattr(self, name)
        return x.reshape(-1, *x.shape[2:])

    @property
    def dones(self) -> Tensor:
        return self.terminated | self.truncated

    def to(self, device: torch.device | str) -> Rollout:
        move = {k: getattr(self, k).to(device) for k in
                ("obs", "actions", "rewards", "terminated", "truncated", "next_obs", "timesteps")}
        return Rollout(**move, extras={k: v.to(device) for k, v in self.extras.items()},
                       episode_returns=self.episode_returns, episode_lengths=self.episode_lengths,
                       last_obs=self.last_obs, last_timesteps=self.last_timesteps)
