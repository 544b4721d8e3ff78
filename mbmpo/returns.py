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


def _episode_bounds(dones: Tensor, timesteps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per step of ``[T, N]`` rollouts: its index t, the first step of its episode within these
    T steps, and one past the episode's last step within them (all ``[T, N]`` long)."""
    T = dones.shape[0]
    t = torch.arange(T).unsqueeze(1).expand(dones.shape).contiguous()
    ep_start = (t - timesteps.long()).clamp(min=0)
    ep_end = torch.empty_like(t)
    nxt = torch.full_like(t[0], T)
    for i in range(T - 1, -1, -1):
        nxt = torch.where(dones[i].bool(), torch.full_like(nxt, i + 1), nxt)
        ep_end[i] = nxt
    return t, ep_start, ep_end


def _drop(rewards: Tensor, bounds: tuple[Tensor, Tensor, Tensor], timesteps: Tensor,
          window: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`reward_drop` (``bounds`` from :func:`_episode_bounds`); whether step t's past window
    is full or cut only by its episode's start, not by the first of these T steps; and whether
    its future window is full (all ``[T, N]``)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    r = rewards.double()
    csum = torch.cat([torch.zeros_like(r[:1]), r.cumsum(0)])  # csum[i] = r_0 + .. + r_{i-1}
    t, ep_start, ep_end = bounds
    p0 = torch.maximum(t - window, ep_start)
    f1 = torch.minimum(t + window, ep_end)
    n_past = t - p0
    past = (csum.gather(0, t) - csum.gather(0, p0)) / n_past.clamp(min=1)
    future = (csum.gather(0, f1) - csum.gather(0, t)) / (f1 - t)
    drop = torch.where(n_past > 0, past - future, torch.zeros_like(past)).clamp(min=0)
    past_ok = (n_past == window) | (timesteps.long() <= t)  # full, or the episode began within these steps
    return drop, past_ok, f1 - t == window


def reward_drop(rewards: Tensor, dones: Tensor, timesteps: Tensor, window: int) -> Tensor:
    """How far the reward falls at each step of a real rollout.

    ``drop_t = mean(r_{t-W} .. r_{t-1}) - mean(r_t .. r_{t+W-1})``, both windows cut to step t's
    episode and to the given steps; 0 where no earlier step of t's episode is present, and
    clamped at 0. High just before and during a lasting fall of the reward (a stumble into a
    posture the policy never leaves), near 0 while the reward is steady or rising.

    Args:
        rewards, dones: ``[T, N]`` (``dones`` = terminated or truncated).
        timesteps: ``[T, N]`` step index within the episode (0 at a reset).
        window: W >= 1.

    Returns:
        ``[T, N]`` float64, >= 0.
    """
    return _drop(rewards, _episode_bounds(dones, timesteps), timesteps, window)[0]


def fall_ahead(rewards: Tensor, dones: Tensor, timesteps: Tensor, window: int, min_drop: float,
               horizon: int) -> Tensor:
    """Whether a lasting fall of the reward starts within the next ``horizon`` steps of each
    step's episode: the label of the fall-hazard classifier (:mod:`mbmpo.hazard`).

    A fall starts at step u when :func:`reward_drop` over ``window`` steps on each side is at
    least ``min_drop``, with a full future window and a past window that is full or cut by the
    episode's start (never by the first of the given steps). A long window counts lasting falls,
    not stumbles that recover; u whose future window the episode's end cuts is no start. Step t is
    1 when a fall starts at some u in (t, t + horizon] of its episode, 0 when none does and each
    such u can be told, NaN otherwise (the given steps begin or end too close to tell).

    Args:
        rewards, dones, timesteps: ``[T, N]`` as in :func:`reward_drop`.
        window: W >= 1; min_drop: > 0; horizon: >= 1.

    Returns:
        ``[T, N]`` float64 in {0, 1, NaN}.
    """
    if horizon < 1 or not min_drop > 0:
        raise ValueError(f"horizon must be >= 1 and min_drop > 0, got {horizon}, {min_drop}")
    bounds = _episode_bounds(dones, timesteps)
    drop, past_ok, future_full = _drop(rewards, bounds, timesteps, window)
    onset = past_ok & future_full & (drop >= min_drop)
    t, _, ep_end = bounds
    ended = dones.bool().gather(0, (ep_end - 1).clamp(min=0))  # t's episode ends within these steps
    told = past_ok & (future_full | ended)

    def count_ahead(x: Tensor) -> Tensor:  # how many u in (t, min(t + horizon, ep_end - 1)] have x
        cs = torch.cat([torch.zeros_like(x[:1]), x.long().cumsum(0)])
        return cs.gather(0, torch.minimum(t + horizon + 1, ep_end)) - cs.gather(0, torch.minimum(t + 1, ep_end))

    found = count_ahead(onset) > 0
    known = found | ((count_ahead(~told) == 0) & (ended | (t + horizon < ep_end)))
    out = found.double()
    return torch.where(known, out, torch.full_like(out, float("nan")))
