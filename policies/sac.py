"""Soft actor-critic networks: a tanh-squashed Gaussian actor and an ensemble of Q-networks
evaluated in one batched pass (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and
Applications", arXiv 1812.05905).

Actions live in ``[-1, 1]^act_dim`` (the env rescales them to its bounds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.distributions import DiagGaussian
from policies.mlp import activation_cls, mlp

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
"""Clamp of the actor's log-std output (the SAC reference implementations' range)."""
_LOG2 = math.log(2.0)


def tanh_log_det_jacobian(u: Tensor) -> Tensor:
    """``sum_i log(1 - tanh(u_i)^2)`` ``[B]`` for pre-squash samples ``u [B, act_dim]``, in
    the stable form ``2 (log 2 - u - softplus(-2u))`` (exact, no ``1e-6`` fudge; finite for
    any ``u``)."""
    return (2.0 * (_LOG2 - u - F.softplus(-2.0 * u))).sum(-1)


def squashed_log_prob(u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """``log pi(tanh(u))`` ``[B]`` of the squashed Gaussian (SAC paper, Appendix C, eq. 21):
    ``log N(u; mean, std) - sum_i log(1 - tanh(u_i)^2)``."""
    return DiagGaussian(mean, log_std).log_prob(u) - tanh_log_det_jacobian(u)


def squashed_sample(mean: Tensor, log_std: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Reparameterized squashed sample ``a = tanh(mean + std * noise)`` and its log-prob
    ``[B]``, given standard-normal ``noise [B, act_dim]``.

    Equal to :func:`squashed_log_prob` at ``u = mean + std * noise``; the Gaussian part uses
    ``(u - mean) / std = noise`` directly (cheaper, same value and gradient)."""
    u = mean + log_std.exp() * noise
    gauss = -(0.5 * noise.pow(2) + log_std).sum(-1) - 0.5 * math.log(2.0 * math.pi) * noise.shape[-1]
    return torch.tanh(u), gauss - tanh_log_det_jacobian(u)


def float32_layer(fn, h: Tensor, *args: Tensor) -> Tensor:
    """``fn(h.float(), *args)`` with autocast off: an output layer stays in float32 inside a
    low-precision ``torch.autocast`` block (a bf16 Q-value of 500 is only resolved to 2; the
    layer is one column, its cost nothing). Outside autocast, plain ``fn(h, *args)``."""
    if not torch.is_autocast_enabled(h.device.type):
        return fn(h, *args)
    with torch.autocast(h.device.type, enabled=False):
        return fn(h.float(), *args)


class SquashedGaussianActor(nn.Module):
    """``pi(a|s) = tanh(N(mean(s), std(s)^2))``: one MLP with ``2 * act_dim`` outputs
    (mean and log-std, the latter clamped to ``[LOG_STD_MIN, LOG_STD_MAX]``); PyTorch's
    default initialization."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: Sequence[int] = (256, 256),
                 activation: str = "relu"):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.net = mlp(obs_dim, hidden_sizes, 2 * act_dim, activation, ortho_init=False)
        for m in self.net:  # ReLU may overwrite the fresh Linear outputs (one allocation less per layer)
            if isinstance(m, nn.ReLU):
                m.inplace = True

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs [B, obs_dim] -> (mean, log_std)``, each ``[B, act_dim]``, float32 also under a
        low-precision autocast (only the hidden layers run in it)."""
        *body, head = self.net
        h = obs
        for layer in body:
            h = layer(h)
        mean, log_std = float32_layer(head, h).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterized actions ``[B, act_dim]`` in [-1, 1] and their log-probs ``[B]``."""
        mean, log_std = self(obs)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return squashed_sample(mean, log_std, noise)

    @torch.no_grad()
    def act(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sampled actions only (no log-prob): the same draws and values as :meth:`sample`."""
        mean, log_std = self(obs)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return torch.tanh(mean + log_std.exp() * noise)

    def mode(self, obs: Tensor) -> Tensor:
        """Deterministic action ``tanh(mean)``."""
        return torch.tanh(self(obs)[0])


class EnsembleQ(nn.Module):
    """``K`` independent MLP critics ``Q_k(obs, act)`` stored as stacked weights
    ``[K, in, out]``, so all of them run in one batched matmul per layer.

    Each member is initialized like ``nn.Linear`` (uniform in ``+-1/sqrt(fan_in)``).
    ``forward(obs [B, obs_dim], act [B, act_dim]) -> [K, B]``, float32 also under a
    low-precision autocast (only the hidden layers run in it).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: Sequence[int] = (256, 256),
                 activation: str = "relu", num_critics: int = 2):
        super().__init__()
        self.num_critics = num_critics
        dims = [obs_dim + act_dim, *[int(h) for h in hidden_sizes], 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(d_in)
            self.weights.append(nn.Parameter(torch.empty(num_critics, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_critics, 1, d_out).uniform_(-bound, bound)))
        self.act = activation_cls(activation)()
        self._relu = activation == "relu"

    def layers(self) -> list[tuple[Tensor, Tensor]]:
        """``[(weight [K, in, out], bias [K, 1, out]), ...]``, the parameters themselves."""
        return list(zip(self.weights, self.biases))

    def forward(self, obs: Tensor, act: Tensor, layers: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """Q-values ``[K, B]``; ``layers`` replaces the parameters (e.g. detached copies, so an
        actor loss sends no gradient into the critics)."""
        layers = self.layers() if layers is None else layers
        x = torch.cat([obs, act], dim=-1)  # [B, in]
        *hidden, (w_out, b_out) = layers
        h = x.expand(w_out.shape[0], *x.shape)  # [K, B, in]
        for i, (w, b) in enumerate(hidden):
            h = torch.baddbmm(b, self._activate(h) if i else h, w)  # [K, B, hidden]
        if hidden:
            h = self._activate(h)
        return float32_layer(lambda z: torch.baddbmm(b_out, z, w_out), h).squeeze(-1)

    def _activate(self, h: Tensor) -> Tensor:
        # in place on the fresh baddbmm output: ReLU's backward needs only its result
        return torch.relu_(h) if self._relu else self.act(h)
