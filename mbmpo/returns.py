"""Discounted returns and generalized advantage estimation (pure functions over tensors)."""

from __future__ import annotations

import torch
from torch import Tensor


def discount_cumsum(x: Tensor, gamma: float, dones: Tensor | None = None) -> Tensor:
    """Discounted cumulative sum along dim 0: ``y_t = x_t + gamma * (1 - done_t) * y_{t+1}``.

    Args:
        x: ``[T, ...]`` values (e.g. rewards).
        gamma: discount factor.
        dones: optional ``[T, ...]`` bool/0-1 tensor; ``done_t`` stops the sum after step t.

    Returns:
        ``[T, ...]`` tensor of the same dtype as ``x``.
    """
    out = torch.empty_like(x)
    running = torch.zeros_like(x[0])
    not_done = None if dones is None else 1.0 - dones.to(x.dtype)
    for t in range(x.shape[0] - 1, -1, -1):
        running = x[t] + gamma * (running if not_done is None else not_done[t] * running)
        out[t] = running
    return out


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) with time-limit handling.

    ``delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)`` and
    ``A_t = delta_t + gamma * lam * (1 - terminated_t) * (1 - truncated_t) * A_{t+1}``.
    ``next_values[t]`` is V of the observation that followed step t; at an episode end it is
    V of the *final* observation, so a truncated step bootstraps and a terminated one does not.

    Args:
        rewards, values, next_values: ``[T, ...]`` float tensors.
        terminated, truncated: ``[T, ...]`` bool or 0/1 tensors.

    Returns:
        ``(advantages, returns)``, both ``[T, ...]``; ``returns = advantages + values``.
    """
    not_term = 1.0 - terminated.to(rewards.dtype)
    cont = not_term * (1.0 - truncated.to(rewards.dtype))
    deltas = rewards + gamma * not_term * next_values - values
    adv = torch.empty_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * cont[t] * last
        adv[t] = last
    return adv, adv + values


def k_step_returns(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    window: int,
    lam: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """K-step returns with value bootstrap (Heess et al. 2017, appendix A, DPPO worker).

    The time axis is cut into windows of ``window`` (= K) steps starting at t = 0. Inside a
    window ``R_t = sum_{u=t}^{e-1} gamma^(u-t) r_u + gamma^(e-t) V(s_e)``, where ``e`` is the
    end of t's window, or of its episode when that comes first (a terminated step adds no
    bootstrap, a truncated one bootstraps from V of the final observation); ``A_t = R_t - V(s_t)``.
    With ``lam < 1`` the advantage is GAE restricted to the window. It is :func:`gae` with a
    time-limit-style cut after every window's last step.

    Args:
        rewards, values, next_values, terminated, truncated: ``[T, ...]`` as in :func:`gae`.
        window: K, steps per window (>= 1).

    Returns:
        ``(advantages, returns)``, both ``[T, ...]``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    cut = torch.zeros(truncated.shape, dtype=torch.bool, device=truncated.device)
    cut[window - 1 :: window] = True
    return gae(rewards, values, next_values, terminated, truncated.bool() | cut, gamma, lam)


def normalize_advantages(adv: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero-mean, unit-std advantages (population std; a single element maps to 0)."""
    if adv.numel() < 2:
        return adv - adv.mean()
    return (adv - adv.mean()) / (adv.std(unbiased=False) + eps)


def explained_variance(pred: Tensor, target: Tensor) -> float:
    """``1 - Var[target - pred] / Var[target]``; NaN when the target has no variance."""
    var_t = target.var(unbiased=False)
    if var_t.item() == 0:
        return float("nan")
    return float(1.0 - (target - pred).var(unbiased=False) / var_t)
