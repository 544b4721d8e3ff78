"""The one rollout loop, used on real (gymnasium) and imagined (model) batched envs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mbmpo.buffers import Rollout

PolicyFn = Callable[[Tensor], tuple[Tensor, dict[str, Tensor]]]
"""``obs [N, obs_dim] -> (actions [N, ...], extras {name: [N, ...]})``."""


@torch.no_grad()
def collect(
    env,
    policy_fn: PolicyFn,
    num_steps: int,
    obs: Tensor | None = None,
    timesteps: Tensor | None = None,
) -> Rollout:
    """Step a batched env ``num_steps`` times with ``policy_fn``.

    Args:
        env: any object following the batched protocol in :mod:`mbmpo.envs`.
        policy_fn: maps observations to actions and per-step extras (log-probs, values...).
        num_steps: T, steps per env copy.
        obs: observations to continue from; ``None`` resets the env.
        timesteps: ``[N]`` step-in-episode counters matching ``obs`` (zeros when None).

    Returns:
        A :class:`Rollout` with ``T x N`` transitions; ``last_obs``/``last_timesteps`` let
        the next call continue the same episodes.
    """
    if obs is None:
        obs = env.reset()
        timesteps = None
    n = obs.shape[0]
    dev = obs.device
    t_in_ep = torch.zeros(n, dtype=torch.long, device=dev) if timesteps is None else timesteps
    obs_buf = torch.empty((num_steps, *obs.shape), dtype=obs.dtype, device=dev)
    next_buf = torch.empty_like(obs_buf)
    rew_buf = torch.empty((num_steps, n), device=dev)
    term_buf = torch.empty((num_steps, n), dtype=torch.bool, device=dev)
    trunc_buf = torch.empty_like(term_buf)
    ts_buf = torch.empty((num_steps, n), dtype=torch.long, device=dev)
    act_buf: Tensor | None = None
    extras: dict[str, Tensor] = {}
    ep_returns: list[float] = []
    ep_lengths: list[int] = []
    for t in range(num_steps):
        act, ext = policy_fn(obs)
        if act_buf is None:
            act_buf = torch.empty((num_steps, *act.shape), dtype=act.dtype, device=dev)
            extras = {k: torch.empty((num_steps, *v.shape), dtype=v.dtype, device=dev)
                      for k, v in ext.items()}
        obs_buf[t] = obs
        act_buf[t] = act
        ts_buf[t] = t_in_ep
        for k, v in ext.items():
            extras[k][t] = v
        obs, rew, term, trunc, info = env.step(act)
        rew_buf[t] = rew
        term_buf[t] = term
        trunc_buf[t] = trunc
        next_buf[t] = info.get("final_obs", obs)
        done = term | trunc
        t_in_ep = torch.where(done, torch.zeros_like(t_in_ep), t_in_ep + 1)
        ep = info.get("episode")
        if ep is not None and bool(ep["mask"].any()):
            mask = ep["mask"]
            ep_returns += ep["r"][mask].tolist()
            ep_lengths += ep["l"][mask].tolist()
    assert act_buf is not None, "num_steps must be >= 1"
    return Rollout(obs_buf, act_buf, rew_buf, term_buf, trunc_buf, next_buf, ts_buf, extras,
                   ep_returns, ep_lengths, last_obs=obs, last_timesteps=t_in_ep)
