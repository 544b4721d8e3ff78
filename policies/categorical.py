"""Categorical MLP policy for Discrete action spaces."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from policies.distributions import Categorical
from policies.mlp import mlp


class CategoricalMLPPolicy(nn.Module):
    """``forward(obs [B, obs_dim]) -> Categorical`` with logits ``[B, num_actions]``."""

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        ortho_init: bool = True,
    ):
        super().__init__()
        self.obs_dim, self.num_actions = obs_dim, num_actions
        self.logits_net = mlp(obs_dim, hidden_sizes, num_actions, activation, ortho_init, 0.01)

    def forward(self, obs: Tensor) -> Categorical:
        return Categorical(self.logits_net(obs))
