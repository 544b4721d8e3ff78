"""Adaptive KL-penalty coefficients (pure functions), shared by PPO, DPPO and MB-MPO."""

from __future__ import annotations


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
