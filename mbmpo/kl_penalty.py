"""Adaptive KL-penalty coefficients (pure functions), shared by PPO, DPPO and MB-MPO."""

from __future__ import annotations

from collections.abc import Sequence


def adapt_kl_coef(kl_coef: float, kl: float, kl_target: float, alpha: float = 1.5,
                  beta_high: float = 2.0, beta_low: float = 0.5) -> float:
    """``kl_coef * alpha`` if ``kl > beta_high * kl_target``, ``kl_coef / alpha`` if
    ``kl < beta_low * kl_target``, else unchanged (strict inequalities).

    The defaults are DPPO's (Heess et al. 2017, Algorithm 1); :func:`ppo_adapt_kl_coef` has the
    PPO paper's constants.
    """
    if kl > beta_high * kl_target:
        return kl_coef * alpha
    if kl < beta_low * kl_target:
        return kl_coef / alpha
    return kl_coef


def ppo_adapt_kl_coef(kl_coef: float, kl: float, kl_target: float) -> float:
    """PPO paper (Schulman et al. 2017, section 4): halve beta if ``KL < d_targ / 1.5``,
    double it if ``KL > d_targ * 1.5``. ProMP adapts its inner-step KL penalty the same way."""
    return adapt_kl_coef(kl_coef, kl, kl_target, alpha=2.0, beta_high=1.5, beta_low=1.0 / 1.5)


def adapt_kl_coef_per_worker(kl_coef: float, worker_kls: Sequence[float], kl_target: float,
                             alpha: float = 1.5, beta_high: float = 2.0, beta_low: float = 0.5) -> float:
    """The appendix's distributed rule: lambda is shared and each of the W workers applies
    :func:`adapt_kl_coef` on its own KL with ``alpha_hat = 1 + (alpha - 1) / W``.

    What the appendix writes, and why W: its worker algorithm ends each iteration with
    "λ ← α̂λ" / "λ ← λ/α̂" on the worker's own KL and sets α̂ = 1 + (α − 1)/K without
    defining K in that sentence. The only K the appendix defines is the length of the
    partial trajectories (K-step returns, ``window_length`` here), which has nothing to do
    with how often λ changes: λ is updated once per iteration by each worker, never per
    K-step window. What α̂ has to undo is that W workers each move the one shared λ once per
    iteration; when all W agree, λ changes by α̂^W = (1 + (α − 1)/W)^W, which is about α for
    any W (1.5, 1.56, 1.60, 1.64 for W = 1, 2, 4, 16 with α = 1.5): the same rate as a single
    PPO learner. Dividing by the window length instead (K = 10 by default, 32 in the
    HalfCheetah preset) would make λ move ln α / (W ln(1 + (α − 1)/K)) times more slowly
    than that rule: 8x (K = 10) to 26x (K = 32) with one worker, 2x to 6.5x with four, a
    slowdown tied to the return window, a setting unrelated to λ. So this code reads K as
    the number of workers; ``kl_coef_rule: mean`` is the single-learner rule applied to the
    mean KL.

    The updates are multiplications, so the shared lambda after all W of them does not depend
    on their order; they are applied in rank order so every worker computes the same float.
    """
    if not worker_kls:
        raise ValueError("worker_kls is empty")
    alpha_hat = 1.0 + (alpha - 1.0) / len(worker_kls)
    for kl in worker_kls:
        kl_coef = adapt_kl_coef(kl_coef, kl, kl_target, alpha_hat, beta_high, beta_low)
    return kl_coef
