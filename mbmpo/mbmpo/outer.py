"""The outer (meta) step of MB-MPO: improve theta for the post-update return of every task,
differentiating through the inner step theta'_k(theta).

* :func:`outer_trpo` (the paper): TRPO on the mean post-update surrogate, the trust region on
  the mean KL of the post-update policies, conjugate gradient through the inner step.
* :func:`outer_ppo` (ProMP lineage): Adam on the clipped post-update surrogate for a few epochs,
  re-adapting theta'_k(theta) every epoch, optionally with a KL penalty on the inner step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mbmpo.kl_penalty import ppo_adapt_kl_coef
from mbmpo.mbmpo.task_batch import TaskBatch
from mbmpo.meta import Params, forward_per_task, likelihood_ratio_objective
from mbmpo.objectives import clipped_surrogate
from mbmpo.trpo import trpo_step

AdaptFn = Callable[[TaskBatch], Params]
"""Pre-update batch -> stacked adapted parameters ``{name: [T, ...]}``, differentiable in theta."""


def surrogate_and_kl(policy: nn.Module, adapt: AdaptFn, pre: TaskBatch, post: TaskBatch):
    """Closures of the mean post-update surrogate, of the mean KL between the post-update
    sampling policies (``post.dist``) and the policies theta'_k(theta) now adapt to, and of
    both from one inner step."""

    def dist_new():
        return forward_per_task(policy, adapt(pre), post.obs)

    def surrogate() -> Tensor:
        # tasks have equal sample counts, so the mean of task means is the overall mean
        return likelihood_ratio_objective(dist_new(), post.act, post.adv, post.log_prob).mean()

    def kl() -> Tensor:
        return post.dist.kl(dist_new()).mean()

    def both() -> tuple[Tensor, Tensor]:  # one inner step for the line search's two checks
        d = dist_new()
        return likelihood_ratio_objective(d, post.act, post.adv, post.log_prob).mean(), post.dist.kl(d).mean()

    return surrogate, kl, both


def outer_trpo(policy: nn.Module, params: list[Tensor], adapt: AdaptFn, pre: TaskBatch, post: TaskBatch,
               config, generator: torch.Generator) -> dict[str, float]:
    """One TRPO step on ``params`` (theta, and the inner step sizes when learned)."""
    c = config
    surrogate, kl, both = surrogate_and_kl(policy, adapt, pre, post)
    fvp_kl = kl
    if c.fvp_subsample < 1.0:
        _, fvp_kl, _ = surrogate_and_kl(policy, adapt, pre.subsample(c.fvp_subsample, generator),
                                     post.subsample(c.fvp_subsample, generator))
    info = trpo_step(params, surrogate, kl, c.max_kl, c.cg_damping, c.cg_iters, c.backtrack_coeff,
                     c.max_backtracks, line_search_no_grad=False, fvp_kl_fn=fvp_kl,
                     surrogate_and_kl_fn=both)
    return {"meta/kl": info.kl, "meta/surrogate_change": info.surrogate_after - info.surrogate_before,
            "meta/step_accepted": float(info.accepted), "meta/num_backtracks": float(info.num_backtracks)}


def outer_ppo(policy: nn.Module, optimizer: torch.optim.Optimizer, adapt: AdaptFn, pre: TaskBatch,
              post: TaskBatch, config, inner_kl_coef: float) -> tuple[dict[str, float], float]:
    """ProMP-style outer step: ``outer_epochs`` Adam steps on the clipped post-update surrogate
    minus ``eta * KL(pi_theta_old || pi_theta)`` on the pre-update samples (eta =
    ``inner_kl_coef`` > 0). Returns the stats and the next eta (adapted by the PPO rule when
    ``adaptive_inner_kl``)."""
    c = config
    pre_old = policy(pre.obs).detach()  # frozen theta_old on the pre-update samples
    eta = inner_kl_coef
    first = last = float("nan")
    for _ in range(c.outer_epochs):
        d = forward_per_task(policy, adapt(pre), post.obs)
        ratio = (d.log_prob(post.act) - post.log_prob).exp()
        obj = clipped_surrogate(ratio, post.adv, c.outer_clip).mean()
        if eta > 0:
            obj = obj - eta * pre_old.kl(policy(pre.obs)).mean()
        optimizer.zero_grad(set_to_none=True)
        (-obj).backward()
        optimizer.step()
        last = obj.item()
        first = last if math.isnan(first) else first
    with torch.no_grad():
        inner_kl = pre_old.kl(policy(pre.obs)).mean().item()
    next_eta = ppo_adapt_kl_coef(eta, inner_kl, c.inner_kl_target) if eta > 0 and c.adaptive_inner_kl else eta
    _, kl, _ = surrogate_and_kl(policy, adapt, pre, post)  # the inner step needs autograd
    return ({"meta/kl": kl().detach().item(), "meta/surrogate_change": last - first,
             "meta/inner_kl": inner_kl, "meta/inner_kl_coef": eta}, next_eta)
