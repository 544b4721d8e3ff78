"""Recurrent (GRU/LSTM) Gaussian policy and value function for DPPO's truncated BPTT.

State convention: one tensor ``[B, state_size]`` per batch of env copies (an LSTM's ``h`` and
``c`` are concatenated), so rollouts can store it like any other per-step extra. A step
first zeroes the state of rows whose episode starts there (``reset``), then runs the cell:
``h_t = cell(o_t, h_{t-1} * (1 - reset_t))``. :meth:`RecurrentCore.unroll` applies the
same rule over a ``[K, B]`` window, so training on stored K-step windows (truncated BPTT:
each window starts from the state recorded while collecting, no gradient into earlier
windows) reproduces exactly what the policy computed while acting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from policies.distributions import DiagGaussian
from policies.mlp import mlp

CELLS = ("gru", "lstm")


class RecurrentCore(nn.Module):
    """A GRU or LSTM cell stepped one env step at a time with per-row episode resets.

    Args:
        in_dim: input features per step.
        hidden_size: H, features out per step.
        cell: ``"gru"`` (state size H) or ``"lstm"`` (state size 2H: ``[h, c]``).
    """

    def __init__(self, in_dim: int, hidden_size: int = 64, cell: str = "gru"):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; allowed: {list(CELLS)}")
        self.cell_type, self.hidden_size = cell, hidden_size
        self.cell = nn.GRUCell(in_dim, hidden_size) if cell == "gru" else nn.LSTMCell(in_dim, hidden_size)

    @property
    def state_size(self) -> int:
        return self.hidden_size * (2 if self.cell_type == "lstm" else 1)

    def initial_state(self, batch: int) -> Tensor:
        """Zeros ``[batch, state_size]`` (the state at every episode start)."""
        w = self.cell.weight_hh
        return torch.zeros(batch, self.state_size, dtype=w.dtype, device=w.device)

    def step(self, x: Tensor, state: Tensor, reset: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x [B, in_dim]``, ``state [B, S]``, ``reset [B]`` bool -> ``(out [B, H], state [B, S])``."""
        if reset is not None:
            state = state * (~reset.bool()).unsqueeze(-1).to(state.dtype)
        if self.cell_type == "gru":
            h = self.cell(x, state)
            return h, h
        h, c = self.cell(x, (state[:, : self.hidden_size], state[:, self.hidden_size :]))
        return h, torch.cat([h, c], dim=-1)

    def unroll(self, x: Tensor, state: Tensor, resets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x [K, B, in_dim]`` from ``state [B, S]`` with ``resets [K, B]``.

        Returns:
            ``(out [K, B, H], states [K, B, S])`` where ``states[k]`` is the state after step k.
        """
        outs, states = [], []
        for k in range(x.shape[0]):
            out, state = self.step(x[k], state, None if resets is None else resets[k])
            outs.append(out)
            states.append(state)
        return torch.stack(outs), torch.stack(states)


class RecurrentGaussianPolicy(nn.Module):
    """``pi(a_t | o_1..o_t) = N(mu(h_t), diag(exp(log_std))^2)`` with ``h_t`` from a GRU/LSTM.

    The mean head is an MLP on the recurrent features; log-std is state-independent (as in
    :class:`policies.GaussianMLPPolicy`).
    """

    is_recurrent = True

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        rnn_size: int = 64,
        hidden_sizes: Sequence[int] = (64,),
        cell: str = "gru",
        activation: str = "tanh",
        init_log_std: float = 0.0,
        ortho_init: bool = True,
    ):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.core = RecurrentCore(obs_dim, rnn_size, cell)
        self.mean_net = mlp(rnn_size, hidden_sizes, act_dim, activation, ortho_init, out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    @property
    def state_size(self) -> int:
        return self.core.state_size

    def initial_state(self, batch: int) -> Tensor:
        return self.core.initial_state(batch)

    def _dist(self, feats: Tensor) -> DiagGaussian:
        mean = self.mean_net(feats)
        return DiagGaussian(mean, self.log_std.expand_as(mean))

    def step(self, obs: Tensor, state: Tensor, reset: Tensor | None = None) -> tuple[DiagGaussian, Tensor]:
        """One step: ``obs [B, obs_dim]`` -> (distribution over ``[B, act_dim]``, next state)."""
        feats, state = self.core.step(obs, state, reset)
        return self._dist(feats), state

    def forward(self, obs: Tensor, state: Tensor, resets: Tensor | None = None) -> DiagGaussian:
        """A window: ``obs [K, B, obs_dim]`` -> distribution with ``mean [K, B, act_dim]``."""
        feats, _ = self.core.unroll(obs, state, resets)
        return self._dist(feats)


class RecurrentValue(nn.Module):
    """``V(o_1..o_t)``: GRU/LSTM features -> MLP -> scalar."""

    is_recurrent = True

    def __init__(
        self,
        obs_dim: int,
        rnn_size: int = 64,
        hidden_sizes: Sequence[int] = (64,),
        cell: str = "gru",
        activation: str = "tanh",
        ortho_init: bool = True,
    ):
        super().__init__()
        self.core = RecurrentCore(obs_dim, rnn_size, cell)
        self.head = mlp(rnn_size, hidden_sizes, 1, activation, ortho_init, out_gain=1.0)

    @property
    def state_size(self) -> int:
        return self.core.state_size

    def initial_state(self, batch: int) -> Tensor:
        return self.core.initial_state(batch)

    def step(self, obs: Tensor, state: Tensor, reset: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``obs [B, obs_dim]`` -> ``(values [B], next state)``."""
        feats, state = self.core.step(obs, state, reset)
        return self.head(feats).squeeze(-1), state

    def forward(self, obs: Tensor, state: Tensor, resets: Tensor | None = None) -> Tensor:
        """A window: ``obs [K, B, obs_dim]`` -> values ``[K, B]``."""
        feats, _ = self.core.unroll(obs, state, resets)
        return self.head(feats).squeeze(-1)

    def values_and_bootstrap(self, obs: Tensor, next_obs: Tensor, state: Tensor,
                             resets: Tensor) -> tuple[Tensor, Tensor]:
        """``V(s_t)`` and ``V(s_{t+1})`` over a window, both ``[K, B]``.

        ``next_obs[k]`` is the observation that followed step k (the final one where an
        episode ended); its value uses the state after step k, with no reset, because it still
        belongs to step k's episode.
        """
        feats, states = self.core.unroll(obs, state, resets)
        k, b = next_obs.shape[:2]
        nfeats, _ = self.core.step(next_obs.reshape(k * b, -1), states.reshape(k * b, -1))
        return self.head(feats).squeeze(-1), self.head(nfeats).squeeze(-1).reshape(k, b)
