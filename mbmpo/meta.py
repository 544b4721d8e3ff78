"""Differentiable inner adaptation step of MB-MPO (MAML-style, on parameter dicts).

The adapted policy of task k is a dict of tensors ``theta'_k = theta + alpha * grad J_k(theta)``
evaluated with ``torch.func.functional_call``; with ``create_graph=True`` the outer
(meta) gradient flows through the inner step (second order). Nothing here swaps
parameters inside a module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from policies.distributions import DiagGaussian

Params = dict[str, Tensor]


def policy_params(policy: nn.Module) -> Params:
    """The module's own parameters as a dict (these carry autograd to ``theta``)."""
    return dict(policy.named_parameters())


def likelihood_ratio_objective(dist, act: Tensor, adv: Tensor, old_log_prob: Tensor) -> Tensor:
    """``mean_b(exp(log pi(a_b|s_b) - old_log_prob_b) * A_b)`` over the last (sample) axis.

    ``act [..., B, act_dim]``, ``adv, old_log_prob [..., B]`` -> ``[...]`` (one value per task
    for ``[T, B]`` batches). At the sampling policy its gradient is the vanilla policy gradient
    ``mean(grad log pi(a|s) * A)``; away from it the likelihood ratio keeps the estimate
    consistent (ProMP, Rothfuss et al. 2019, eq. 6).
    """
    return ((dist.log_prob(act) - old_log_prob).exp() * adv).mean(-1)


def vpg_surrogate(policy: nn.Module, params: Params, obs: Tensor, act: Tensor, adv: Tensor,
                  old_log_prob: Tensor) -> Tensor:
    """:func:`likelihood_ratio_objective` of ``policy`` evaluated with ``params``.

    Shapes: ``obs [B, obs_dim]``, ``act [B, act_dim]``, ``adv [B]``, ``old_log_prob [B]``.
    """
    return likelihood_ratio_objective(functional_call(policy, params, (obs,)), act, adv, old_log_prob)


def adapt(
    policy: nn.Module,
    params: Params,
    obs: Tensor,
    act: Tensor,
    adv: Tensor,
    old_log_prob: Tensor,
    inner_lr: float | Params,
    first_order: bool = False,
    num_steps: int = 1,
) -> Params:
    """Inner step(s) ``theta' = theta + alpha * grad J(theta)`` on one task's pre-update data.

    Args:
        policy: module whose forward maps ``obs`` to a distribution.
        params: ``theta`` (e.g. :func:`policy_params`), possibly requiring grad.
        obs, act, adv, old_log_prob: the task's pre-update samples ``[B, ...]``.
        inner_lr: step size alpha, a float or a per-parameter dict (Meta-SGD) whose
            tensors may themselves be learned.
        first_order: drop the second-order terms (the inner gradient is detached, so the
            outer gradient w.r.t. theta equals the gradient w.r.t. theta').
        num_steps: number of inner steps n (all on the same pre-update data).

    Returns:
        The adapted parameters ``theta'`` as a new dict.
    """
    stacked = adapt_tasks(policy, params, obs.unsqueeze(0), act.unsqueeze(0), adv.unsqueeze(0),
                          old_log_prob.unsqueeze(0), inner_lr, first_order, num_steps)
    return {n: v.squeeze(0) for n, v in stacked.items()}


def adapt_tasks(
    policy: nn.Module,
    params: Params,
    obs: Tensor,
    act: Tensor,
    adv: Tensor,
    old_log_prob: Tensor,
    inner_lr: float | Params,
    first_order: bool = False,
    num_steps: int = 1,
) -> Params:
    """:func:`adapt` for T tasks at once (``adapt`` is the case T = 1): ``obs [T, B, obs_dim]``, ``act [T, B, act_dim]``,
    ``adv, old_log_prob [T, B]`` -> stacked adapted parameters ``{name: [T, ...]}``.

    ``theta`` is broadcast to ``[T, ...]`` and the objective is the sum over tasks of each
    task's mean surrogate, so one batched forward and one backward give every task's own
    gradient (task t's loss depends only on slice t), with T times fewer small ops than a
    loop over tasks. The per-task objective is
    :func:`likelihood_ratio_objective`.
    """
    num_tasks = obs.shape[0]
    names = list(params)
    cur = {n: p.unsqueeze(0).expand(num_tasks, *p.shape) for n, p in params.items()}
    for _ in range(num_steps):
        dist = forward_per_task(policy, cur, obs)
        j = likelihood_ratio_objective(dist, act, adv, old_log_prob).sum()
        grads = torch.autograd.grad(j, [cur[n] for n in names], create_graph=not first_order,
                                    allow_unused=True)
        new = {}
        for n, g in zip(names, grads):
            if g is None:
                new[n] = cur[n]
                continue
            if first_order:
                g = g.detach()
            lr = inner_lr[n] if isinstance(inner_lr, dict) else inner_lr
            new[n] = cur[n] + lr * g
        cur = new
    return cur


def stack_params(per_task: Sequence[Params]) -> Params:
    """``[{name: tensor}] * T -> {name: [T, ...]}`` (keeps autograd)."""
    return {n: torch.stack([p[n] for p in per_task]) for n in per_task[0]}


def forward_per_row(policy: nn.Module, stacked: Params, row_task: Tensor, obs: Tensor) -> DiagGaussian:
    """Evaluate row i of ``obs [N, obs_dim]`` with the parameters of task ``row_task[i]``.

    ``stacked`` holds ``[T, ...]`` parameter tensors; the result is a distribution with
    ``[N, act_dim]`` tensors. Uses ``torch.vmap`` over rows (batched matmuls), so all tasks
    are evaluated in one call.
    """
    rows = {n: p[row_task] for n, p in stacked.items()}  # [N, ...]

    def one(p: Params, o: Tensor):
        return functional_call(policy, p, (o.unsqueeze(0),))

    dist = torch.vmap(one)(rows, obs)
    return type(dist)(*(t.squeeze(1) for t in dist))


def forward_per_task(policy: nn.Module, stacked: Params, obs: Tensor):
    """``obs [T, B, obs_dim]`` with task t's parameters on ``obs[t]`` -> ``[T, B, ...]`` tensors."""

    def one(p: Params, o: Tensor):
        return functional_call(policy, p, (o,))

    return torch.vmap(one)(stacked, obs)
