"""Imagined rollouts -> per-task samples: value baselines, GAE advantages, grouping by task.

Rows of an imagined rollout are laid out in contiguous blocks: ``rollouts_per_task`` rows per
task, ``tasks_per_model`` tasks per model. A task's advantages use its own baseline (the
paper's per-task linear feature baseline, or one MLP refit on the whole batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mbmpo.buffers import Rollout
from mbmpo.returns import discount_cumsum, gae
from policies import LinearFeatureBaseline, MLPValue
from policies.value import half_mse, minibatch_pass

ValuesFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(feats [H, N, D], ts [H, N], next_feats, next_ts, returns [H, N]) -> (V(s_t), V(s_t+1))``."""


@dataclass
class TaskBatch:
    """Imagined samples grouped by task: tensors ``[T, B, ...]`` (B = rollouts x horizon).

    Attributes:
        obs: ``[T, B, feat_dim]`` policy inputs; act ``[T, B, act_dim]``; log_prob, adv ``[T, B]``.
        dist: the sampling distribution (tensors ``[T, B, act_dim]``), set for post-update batches.
        mean_return: mean return of the imagined episodes (costs included, bootstrap not).
        bootstrap_mean: mean value added at the horizon per rollout (0 without one).
    """

    obs: Tensor
    act: Tensor
    log_prob: Tensor
    adv: Tensor
    dist: Any
    mean_return: float
    bootstrap_mean: float = 0.0

    def subsample(self, frac: float, generator: torch.Generator) -> TaskBatch:
        """The same random fraction of every task's samples (for cheaper Fisher products)."""
        b = self.obs.shape[1]
        idx = torch.randperm(b, generator=generator, device=generator.device)[: max(1, int(b * frac))]
        dist = None if self.dist is None else type(self.dist)(*(t[:, idx] for t in self.dist))
        return TaskBatch(self.obs[:, idx], self.act[:, idx], self.log_prob[:, idx], self.adv[:, idx],
                         dist, self.mean_return)


def make_task_batch(roll: Rollout, features: Callable[[Tensor], Tensor], values: ValuesFn,
                    bootstrap: Tensor | None, num_tasks: int, rollouts_per_task: int, gamma: float,
                    gae_lambda: float, normalize_adv: bool) -> TaskBatch:
    """Per-task advantages (GAE on the baseline's values), normalized per task.

    Args:
        roll: imagined rollout ``[H, N, ...]`` with ``N = num_tasks * rollouts_per_task`` and
            the sampling ``log_prob`` in its extras.
        features: full observation -> policy input.
        values: the baseline (:func:`linear_values` or :meth:`MLPBaseline.values`).
        bootstrap: ``[N]`` value added to the last reward of each row (None: none); the
            baselines then see that step as final.
    """
    trunc = roll.truncated.clone()
    trunc[-1] |= ~roll.terminated[-1]  # the rollout's end cuts the last episode
    rewards, terminated = roll.rewards.double(), roll.terminated
    boot_mean = 0.0
    if bootstrap is not None:
        boot_mean = float(bootstrap.mean())
        rewards = rewards.clone()
        rewards[-1] += bootstrap
        terminated = terminated.clone()
        terminated[-1] = True
        trunc[-1] = False
    dones = terminated | trunc
    rets = discount_cumsum(rewards, gamma, dones)  # [H, N]
    feats = features(roll.obs)  # [H, N, D]
    next_feats = features(roll.next_obs)
    ts, next_ts = roll.timesteps, roll.timesteps + 1
    v, next_v = values(feats, ts, next_feats, next_ts, rets)
    adv, _ = gae(rewards, v, next_v, terminated, trunc, gamma, gae_lambda)

    def by_task(x: Tensor) -> Tensor:  # [H, N, ...] -> [T, r * H, ...]
        x = x.reshape(x.shape[0], num_tasks, rollouts_per_task, *x.shape[2:]).transpose(0, 1)
        return x.reshape(num_tasks, -1, *x.shape[3:])

    adv_t = by_task(adv).float()
    if normalize_adv:
        adv_t = (adv_t - adv_t.mean(1, keepdim=True)) / (adv_t.std(1, keepdim=True) + 1e-8)
    ep_ret = float(np.mean(roll.episode_returns)) if roll.episode_returns else float("nan")
    return TaskBatch(by_task(feats), by_task(roll.actions), by_task(roll.extras["log_prob"]), adv_t,
                     None, ep_ret, boot_mean)


def linear_values(num_tasks: int, rollouts_per_task: int) -> ValuesFn:
    """Per-task linear feature baselines fitted on each task's returns (rllab, MB-MPO)."""

    def values(feats: Tensor, ts: Tensor, next_feats: Tensor, next_ts: Tensor, rets: Tensor):
        r = rollouts_per_task
        v = torch.empty_like(rets)
        next_v = torch.empty_like(rets)
        for t in range(num_tasks):
            cols = slice(t * r, (t + 1) * r)
            base = LinearFeatureBaseline(feats.shape[-1]).to(feats.device)
            base.fit(feats[:, cols].reshape(-1, feats.shape[-1]).double(), ts[:, cols].reshape(-1),
                     rets[:, cols].reshape(-1))
            v[:, cols] = base(feats[:, cols].double(), ts[:, cols])
            next_v[:, cols] = base(next_feats[:, cols].double(), next_ts[:, cols])
        return v, next_v

    return values


class MLPBaseline:
    """One MLP value function on (features, t / horizon), refit on every batch's returns."""

    def __init__(self, net: MLPValue, horizon: int, epochs: int, generator: torch.Generator):
        self.net = net
        self.optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        self.horizon, self.epochs, self.generator = horizon, epochs, generator

    def values(self, feats: Tensor, ts: Tensor, next_feats: Tensor, next_ts: Tensor,
               rets: Tensor) -> tuple[Tensor, Tensor]:
        def inputs(f: Tensor, t: Tensor) -> Tensor:
            return torch.cat([f, (t.float() / self.horizon).unsqueeze(-1)], -1)

        x = inputs(feats, ts).reshape(-1, feats.shape[-1] + 1)
        y = rets.float().reshape(-1)
        with torch.enable_grad():  # callers may sample under no_grad
            for _ in range(self.epochs):
                minibatch_pass(self.net, self.optimizer, x, y, half_mse, 1024, self.generator)
        with torch.no_grad():
            v = self.net(x).reshape(rets.shape).double()
            next_v = self.net(inputs(next_feats, next_ts)).double()
        return v, next_v
