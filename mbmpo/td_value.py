"""A state-value function fitted by TD(0) on transitions, for bootstrapping imagined
rollouts at their horizon (model-based value expansion: Feinberg et al. 2018; a terminal value
on imagined paths as in Clavera et al. 2020, MAAC).

An imagined rollout of H steps values what happens after step H at 0. Where the real task has
a lasting failure (HalfCheetah stumbling into a posture it never leaves, BENCHMARKS.md 7.21), a
fall within the horizon then costs at most H steps of reward, far less than the rest of a real
episode, and the policy is not pushed to avoid it. MB-MPO fits V either on the real dataset or
on imagined transitions of theta (``MBMPOConfig.terminal_value``); on HalfCheetah only the
imagined fit helped (BENCHMARKS.md 7.21).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from policies.value import minibatch_pass


def td_targets(net: nn.Module, rewards: Tensor, next_feats: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """TD(0) targets in the scaled units of ``net``, which predicts ``(1 - gamma) V(s)``:
    ``y = (1 - gamma) r + gamma (1 - terminated) net(s')``; ``[B]`` float32.

    The scaling keeps the network's outputs near the size of one reward (a value of ~1 / (1 - gamma)
    rewards would be ~100 times larger). A time-limit end is not ``terminated`` and bootstraps.
    """
    with torch.no_grad():
        nv = net(next_feats.float())
    return (1 - gamma) * rewards.float() + gamma * (~terminated.bool()).float() * nv


def fit_td_value(net: nn.Module, optimizer: torch.optim.Optimizer, feats: Tensor, rewards: Tensor,
                 next_feats: Tensor, terminated: Tensor, gamma: float, epochs: int,
                 batch_size: int = 256, generator: torch.Generator | None = None) -> dict[str, float]:
    """``epochs`` rounds of fitted value iteration on transitions (real or imagined): each round computes TD(0)
    targets with a frozen copy of ``net`` (one Bellman backup per round), then regresses ``net`` on
    them for one pass of minibatches.

    Args:
        net: maps ``[B, D]`` features to ``[B]``, in units of ``(1 - gamma) V``.
        feats, next_feats: ``[B, D]``; rewards ``[B]``; terminated ``[B]`` bool.

    Returns:
        ``value/td_loss`` (mean squared TD error of the last round, scaled units) and
        ``value/mean`` (mean V over the data, in return units).
    """
    x = feats.float()
    loss = 0.0
    for _ in range(epochs):
        y = td_targets(copy.deepcopy(net), rewards, next_feats, terminated, gamma)
        loss = minibatch_pass(net, optimizer, x, y, half_mse, batch_size, generator)
    with torch.no_grad():
        mean_v = float(net(x).mean()) / (1 - gamma)
    return {"value/td_loss": 2 * loss, "value/mean": mean_v}


def half_mse(pred: Tensor, target: Tensor) -> Tensor:
    """``0.5 * mean((pred - target)^2)``."""
    return 0.5 * (pred - target).pow(2).mean()


def terminal_values(net: nn.Module, next_feats: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """What to add to the last imagined reward of each row: ``gamma V(s_H)``, 0 where the row's
    last step terminated. ``next_feats`` ``[N, D]``, ``terminated`` ``[N]`` -> ``[N]`` float64."""
    with torch.no_grad():
        v = net(next_feats.float()).double() / (1 - gamma)
    return gamma * v * (~terminated.bool()).double()
