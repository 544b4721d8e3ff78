"""State-value baselines: an MLP value function and the linear feature baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from policies.mlp import mlp


class MLPValue(nn.Module):
    """``V(obs [B, obs_dim]) -> [B]``."""

    def __init__(
        self,
        obs_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        ortho_init: bool = True,
    ):
        super().__init__()
        self.net = mlp(obs_dim, hidden_sizes, 1, activation, ortho_init, out_gain=1.0)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).squeeze(-1)


def minibatch_pass(net: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                   loss_fn: Callable[[Tensor, Tensor], Tensor], batch_size: int,
                   generator: torch.Generator | None = None) -> float:
    """One pass of Adam-style minibatch steps on ``loss_fn(net(x[idx]), y[idx])`` over a random
    order of the ``[B, ...]`` rows; returns the mean loss per row."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)  # read once, not per minibatch
    for i in range(0, n, batch_size):
        idx = perm[i : i + batch_size]
        loss = loss_fn(net(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(idx)
    return float(loss_sum) / max(n, 1)


def spd_solve(a: Tensor, b: Tensor) -> Tensor | None:
    """Solve ``a x = b`` for a symmetric positive-definite ``a [D, D]``, ``b [D]`` by Cholesky;
    None if ``a`` is not numerically positive definite.

    Not ``torch.linalg.lstsq``: on CPU its LAPACK driver (MKL's gelsy) rounds differently
    depending on where its inputs lie in memory, so the same seeded run gave different
    baselines, and from there different policies, in different processes.
    """
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        return None
    return torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)


class LinearFeatureBaseline(nn.Module):
    """Ridge regression on ``[o, o^2, t, t^2, t^3, 1]`` (rllab's baseline, used by MB-MPO).

    ``t`` is the time step within the episode scaled by 1/100. ``fit`` solves the regularized
    normal equations, raising the ridge coefficient tenfold until the solution is finite.
    """

    def __init__(self, obs_dim: int, reg_coeff: float = 1e-5):
        super().__init__()
        self.reg_coeff = reg_coeff
        self.register_buffer("coeffs", torch.zeros(2 * obs_dim + 4))

    @staticmethod
    def features(obs: Tensor, timesteps: Tensor) -> Tensor:
        """``obs [B, obs_dim]``, ``timesteps [B]`` -> ``[B, 2 * obs_dim + 4]``."""
        o = obs.clamp(-10, 10)
        t = timesteps.to(obs.dtype).unsqueeze(-1) / 100.0
        return torch.cat([o, o * o, t, t * t, t**3, torch.ones_like(t)], dim=-1)

    @torch.no_grad()
    def fit(self, obs: Tensor, timesteps: Tensor, returns: Tensor) -> None:
        x = self.features(obs, timesteps).double()
        y = returns.double()
        a, b = x.T @ x, x.T @ y
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        reg = self.reg_coeff
        for _ in range(5):
            sol = spd_solve(a + reg * eye, b)
            if sol is not None and torch.isfinite(sol).all():
                self.coeffs.copy_(sol.to(self.coeffs.dtype))
                return
            reg *= 10

    def forward(self, obs: Tensor, timesteps: Tensor) -> Tensor:
        return self.features(obs, timesteps) @ self.coeffs.to(obs.dtype)


def half_mse(pred: Tensor, target: Tensor) -> Tensor:
    """``0.5 * mean((pred - target)^2)``."""
    return 0.5 * (pred - target).pow(2).mean()
