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
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn import functional as F

from policies.distributions import DiagGaussian
from policies.mlp import mlp

CELLS = ("gru", "lstm")


class GRUWindow(torch.autograd.Function):
    """A GRU unrolled over a window with a hand-written backward pass (BPTT).

    The same equations as :class:`torch.nn.GRUCell` (PyTorch's gate order r, z, n)::

        hp_k = h_{k-1} * keep_k                     (keep_k = 0 where an episode starts)
        r_k, z_k = sigmoid(gi_k[r, z] + W_hh[r, z] hp_k + b_hh[r, z])
        n_k = tanh(gi_k[n] + r_k * (W_hh[n] hp_k + b_hh[n]))
        h_k = (1 - z_k) n_k + z_k hp_k

    Autograd through a per-step cell records ~30 tiny ops per step and replays them one by
    one; windows of 32 steps and 2 sequences per minibatch make that overhead most of a
    recurrent DPPO update. Here the forward runs without a graph, and the backward needs one
    batched pass for the gate derivatives, ~10 ops per step for the recurrence, and one matmul
    for ``dW_hh``. First-order only (``once_differentiable``).

    Inputs: ``gi [K, B, 3H]`` (``x W_ih^T + b_ih``, computed by the caller under autograd),
    ``h0 [B, H]``, ``keep [K, B, 1]`` or None, ``w_hh [3H, H]``, ``b_hh [3H]``.
    Output: ``h [K, B, H]``, the state after each step.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, gi: Tensor, h0: Tensor, keep: Tensor | None, w_hh: Tensor,
                b_hh: Tensor) -> Tensor:
        hidden = h0.shape[-1]
        hs, hps, rzs, ns, ghns = [], [], [], [], []
        h = h0
        # per-step views made once: indexing inside the loop costs as much as the maths
        gi_rz, gi_n = gi[..., : 2 * hidden].unbind(0), gi[..., 2 * hidden :].unbind(0)
        keeps = [None] * gi.shape[0] if keep is None else keep.unbind(0)
        w_t = w_hh.t()
        for k in range(gi.shape[0]):
            hp = h if keeps[k] is None else h * keeps[k]
            gh = torch.addmm(b_hh, hp, w_t)
            rz = torch.sigmoid(gi_rz[k] + gh[:, : 2 * hidden])
            ghn = gh[:, 2 * hidden :]
            n = torch.tanh(torch.addcmul(gi_n[k], rz[:, :hidden], ghn))
            h = torch.lerp(n, hp, rz[:, hidden:])  # n + z (hp - n)
            hs.append(h)
            hps.append(hp)
            rzs.append(rz)
            ns.append(n)
            ghns.append(ghn)
        ctx.save_for_backward(torch.stack(hps), torch.stack(rzs), torch.stack(ns), torch.stack(ghns),
                              keep, w_hh)
        return torch.stack(hs)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_h: Tensor) -> tuple[Tensor, Tensor, None, Tensor, Tensor]:
        hps, rzs, ns, ghns, keep, w_hh = ctx.saved_tensors
        k_len, batch, hidden = hps.shape
        r, z = rzs[..., :hidden], rzs[..., hidden:]
        # step-independent factors of the chain rule, for all steps at once
        dn_dh = (1 - z) * (1 - ns * ns)      # d h / d a_n, a_n the pre-tanh input
        dar_dan = ghns * r * (1 - r)         # d a_n / d a_r through r
        daz_dh = (hps - ns) * z * (1 - z)    # d h / d a_z
        dgi, dgh = [None] * k_len, [None] * k_len
        dn_dh, dar_dan, daz_dh, rs, zs, gh = (t.unbind(0) for t in (dn_dh, dar_dan, daz_dh, r, z, grad_h))
        keeps = [None] * k_len if keep is None else keep.unbind(0)
        dh = torch.zeros_like(grad_h[0])
        for k in range(k_len - 1, -1, -1):
            dh = dh + gh[k]
            da_n = dh * dn_dh[k]
            da_rz = torch.cat([da_n * dar_dan[k], dh * daz_dh[k]], -1)
            dgi[k] = torch.cat([da_rz, da_n], -1)
            dgh[k] = torch.cat([da_rz, da_n * rs[k]], -1)
            dh = torch.addmm(dh * zs[k], dgh[k], w_hh)  # d loss / d hp_k
            if keeps[k] is not None:
                dh = dh * keeps[k]
        dgh_all = torch.stack(dgh).reshape(k_len * batch, 3 * hidden)
        d_w = dgh_all.t() @ hps.reshape(k_len * batch, hidden)
        return torch.stack(dgi), dh, None, d_w, dgh_all.sum(0)


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

        A GRU runs as one :class:`GRUWindow` (hand-written BPTT, same numbers as stepping the
        cell); an LSTM steps its cell under autograd.
        """
        if self.cell_type == "gru":
            keep = None if resets is None else (~resets.bool()).unsqueeze(-1).to(state.dtype)
            c = self.cell
            h = GRUWindow.apply(F.linear(x, c.weight_ih, c.bias_ih), state, keep, c.weight_hh, c.bias_hh)
            return h, h
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
