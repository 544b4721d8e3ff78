"""The one rollout loop, used on real (gymnasium) and imagined (model) batched envs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
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
    on_step: Callable[[Tensor], None] | None = None,
) -> Rollout:
    """Step a batched env ``num_steps`` times with ``policy_fn``.

    Args:
        env: any object following the batched protocol in :mod:`mbmpo.envs`.
        policy_fn: maps observations to actions and per-step extras (log-probs, values...).
        num_steps: T, steps per env copy.
        obs: observations to continue from; ``None`` resets the env.
        timesteps: ``[N]`` step-in-episode counters matching ``obs`` (zeros when None).
        on_step: called with ``done [N]`` (bool) after every env step; a stateful
            (recurrent) policy resets its state there for the envs whose episode ended.

    Returns:
        A :class:`Rollout` with ``T x N`` transitions; ``last_obs``/``last_timesteps`` let
        the next call continue the same episodes.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if obs is None:
        obs = env.reset()
        timesteps = None
    n = obs.shape[0]
    t_in_ep = torch.zeros(n, dtype=torch.long, device=obs.device) if timesteps is None else timesteps
    # Python lists + one stack at the end: cheaper per step than indexed writes.
    obs_l, next_l, act_l, rew_l, term_l, trunc_l, ts_l = [], [], [], [], [], [], []
    ext_l: dict[str, list[Tensor]] = {}
    ep_l: list[dict[str, Tensor]] = []  # read once at the end: no host round trip per step
    for _ in range(num_steps):
        act, ext = policy_fn(obs)
        obs_l.append(obs)
        act_l.append(act)
        ts_l.append(t_in_ep)
        for k, v in ext.items():
            ext_l.setdefault(k, []).append(v)
        obs, rew, term, trunc, info = env.step(act)
        rew_l.append(rew)
        term_l.append(term)
        trunc_l.append(trunc)
        next_l.append(info.get("final_obs", obs))
        done = term | trunc
        if on_step is not None:
            on_step(done)
        ep = info.get("episode")
        if ep is not None:
            ep_l.append(ep)
        t_in_ep = torch.where(done, 0, t_in_ep + 1)
    check = getattr(env, "check_rollout", None)  # errors an env defers to the end of a rollout
    if check is not None:
        check()
    ep_returns, ep_lengths = finished_episodes(ep_l)
    st = torch.stack
    return Rollout(st(obs_l), st(act_l), st(rew_l), st(term_l), st(trunc_l), st(next_l), st(ts_l),
                   {k: st(v) for k, v in ext_l.items()}, ep_returns, ep_lengths,
                   last_obs=obs, last_timesteps=t_in_ep)


def finished_episodes(infos: list[dict[str, Any]]) -> tuple[list[float], list[int]]:
    """Returns and lengths of the episodes that ended, in step order, then env order.

    ``infos`` are the per-step ``info["episode"]`` dicts of a rollout: ``mask [N]`` (bool),
    ``r [N]``, ``l [N]``, as numpy arrays (real envs) or tensors on any device (imagined envs,
    read here once instead of once per step).
    """
    if not infos:
        return [], []
    stack = torch.stack if isinstance(infos[0]["mask"], Tensor) else np.stack
    mask = stack([e["mask"] for e in infos])
    returns, lengths = (stack([e[k] for e in infos])[mask].tolist() for k in ("r", "l"))
    return [float(r) for r in returns], [int(n) for n in lengths]
