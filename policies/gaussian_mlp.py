"""Gaussian MLP policy with a state-independent log-std."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from policies.distributions import DiagGaussian
from policies.mlp import mlp


class GaussianMLPPolicy(nn.Module):
    """``pi(a|s) = N(mu_theta(s), diag(exp(log_std))^2)``.

    ``forward(obs [B, obs_dim]) -> DiagGaussian`` with ``mean, log_std`` of shape
    ``[B, act_dim]``. Works with ``torch.func.functional_call(policy, params, (obs,))``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        init_log_std: float = 0.0,
        ortho_init: bool = True,
    ):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.mean_net = mlp(obs_dim, hidden_sizes, act_dim, activation, ortho_init, out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: Tensor) -> DiagGaussian:
        mean = self.mean_net(obs)
        return DiagGaussian(mean, self.log_std.expand_as(mean))
