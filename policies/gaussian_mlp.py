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

    ``min_log_std`` puts a floor under the std (rllab's ``min_std``): the forward pass uses
    ``max(log_std, min_log_std)``, and ``clamp_log_std_()`` projects the parameter back onto
    the floor after an optimizer step, so that it stays where its gradient is alive.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        init_log_std: float = 0.0,
        ortho_init: bool = True,
        min_log_std: float | None = None,
    ):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.min_log_std = min_log_std
        self.mean_net = mlp(obs_dim, hidden_sizes, act_dim, activation, ortho_init, out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: Tensor) -> DiagGaussian:
        mean = self.mean_net(obs)
        log_std = self.log_std if self.min_log_std is None else self.log_std.clamp(min=self.min_log_std)
        return DiagGaussian(mean, log_std.expand_as(mean))

    def std(self) -> Tensor:
        """The std used by ``forward``, ``[act_dim]`` (detached)."""
        log_std = self.log_std.detach()
        return (log_std if self.min_log_std is None else log_std.clamp(min=self.min_log_std)).exp()

    @torch.no_grad()
    def clamp_log_std_(self) -> None:
        """Project ``log_std`` onto ``>= min_log_std`` (a no-op without a floor)."""
        if self.min_log_std is not None:
            self.log_std.clamp_(min=self.min_log_std)
