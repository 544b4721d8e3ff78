"""Gorila's update rules as pure functions: exploration schedule, (double) DQN targets and
loss, the parameter server's AdaGrad step, the staleness rule and the learners' loss-outlier
filter (Nair et al. 2015, "Massively Parallel Methods for Deep Reinforcement Learning",
arXiv 1507.04296)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mbmpo.normalization import RunningMeanStd


def linear_epsilon(step: float, start: float, end: float, decay_steps: int) -> float:
    """Exploration rate annealed linearly from ``start`` to ``end`` over ``decay_steps`` real
    steps, then constant (DQN and Gorila anneal 1 -> 0.1 over the first 1M frames)."""
    if decay_steps <= 0:
        return end
    frac = min(max(step / decay_steps, 0.0), 1.0)
    return start + frac * (end - start)


def td_targets(reward: Tensor, terminated: Tensor, next_q_target: Tensor, gamma: float,
               next_q_online: Tensor | None = None) -> Tensor:
    """One-step TD targets ``y [B]``.

    DQN (Mnih et al. 2015): ``y = r + γ (1 - terminal) max_a Q⁻(s', a)``. Double DQN (van
    Hasselt et al. 2016), when ``next_q_online`` is given: the online network picks
    ``a* = argmax_a Q(s', a)`` and the target network evaluates it, ``Q⁻(s', a*)``.

    With several heads (factorized discretized actions) the per-head values are averaged,
    the shared target of action branching (Tavakoli et al. 2018, eq. 6); one head is plain DQN.

    Args:
        reward, terminated: ``[B]``; truncated steps have ``terminated`` False (bootstrap).
        next_q_target, next_q_online: ``[B, H, n]`` at the next observations.
    """
    if next_q_online is None:
        v = next_q_target.max(-1).values  # [B, H]
    else:
        a_star = next_q_online.argmax(-1, keepdim=True)
        v = next_q_target.gather(-1, a_star).squeeze(-1)  # [B, H]
    v = v.mean(-1)  # [B]
    return reward + gamma * (~terminated).to(v.dtype) * v


def dqn_loss(q: Tensor, actions: Tensor, targets: Tensor) -> Tensor:
    """Huber loss (DQN's error clipping to [-1, 1]) between ``Q(s, a) [B, H]`` and ``y [B]``,
    mean over batch and heads. ``q [B, H, n]``, ``actions [B, H]`` (int64)."""
    q_taken = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # [B, H]
    return torch.nn.functional.smooth_l1_loss(q_taken, targets.unsqueeze(-1).expand_as(q_taken))


def adagrad_update(params: Tensor, accum: Tensor, grad: Tensor, lr: float, eps: float = 1e-10
                   ) -> tuple[Tensor, Tensor]:
    """One AdaGrad step (Duchi et al. 2011), the parameter server's optimizer in Gorila.

    ``G ← G + g²``, ``θ ← θ − lr · g / (√G + eps)`` (elementwise; same as
    ``torch.optim.Adagrad`` without learning-rate decay). Returns new tensors.
    """
    accum = accum + grad * grad
    return params - lr * grad / (accum.sqrt() + eps), accum


def is_stale(server_version: int, grad_version: int, max_staleness: int) -> bool:
    """A gradient computed on parameters ``grad_version`` is dropped when the server has
    applied more than ``max_staleness`` updates since then. A version ahead of the server's
    (the server was restored from an older checkpoint) is not stale."""
    return server_version - grad_version > max_staleness


def is_loss_outlier(loss: float, mean: float, std: float, k: float) -> bool:
    """Gorila's stability rule: drop a gradient whose |loss| exceeds ``mean + k·std`` of the
    learner's running loss statistics."""
    return abs(loss) > mean + k * std


class LossFilter:
    """Running mean/std of |loss| (``RunningMeanStd``) and :func:`is_loss_outlier`.

    Every loss updates the statistics, dropped or not, so a lasting rise of the loss
    (e.g. growing Q-values) is accepted after a while instead of locking the learner out.
    The rule is off during the first ``warmup`` losses and when ``k <= 0``.
    """

    def __init__(self, k: float = 3.0, warmup: int = 100):
        self.k = k
        self.warmup = warmup
        self.stats = RunningMeanStd(())

    def keep(self, loss: float) -> bool:
        n = int(self.stats.count.item())
        drop = (self.k > 0 and n >= self.warmup and
                is_loss_outlier(loss, self.stats.mean.item(), math.sqrt(self.stats.var.item()), self.k))
        self.stats.update(torch.tensor([abs(loss)], dtype=torch.float64))
        return not drop
