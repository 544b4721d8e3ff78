"""Lasting falls of the real reward (pure functions over ``[T, N]`` real rollouts): the
reward drop that focused starts rank states by, and the fall-ahead label of the fall-hazard
classifier."""

from __future__ import annotations

import torch
from torch import Tensor


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
    step's episode: the label of the fall-hazard classifier (:mod:`mbmpo.mbmpo.extensions.fall_hazard`).

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
