"""TRPO machinery (Schulman et al. 2015, Appendix C): conjugate gradient on Fisher-vector
products and a backtracking line search that enforces the KL constraint.

Written over a list of parameter tensors and closures, so the model-free TRPO baseline and
MB-MPO's outer step (whose surrogate flows through the inner adaptation step) share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor


def flat_params(params: Sequence[Tensor]) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def set_flat_params_(params: Sequence[Tensor], flat: Tensor) -> None:
    i = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[i : i + n].view_as(p))
        i += n


def flat_grad(
    y: Tensor, params: Sequence[Tensor], create_graph: bool = False, retain_graph: bool | None = None
) -> Tensor:
    """``d y / d params`` flattened to ``[num_params]``; unused parameters get zeros."""
    grads = torch.autograd.grad(
        y, list(params), create_graph=create_graph, retain_graph=retain_graph, allow_unused=True
    )
    return torch.cat([
        (g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)
    ])


def conjugate_gradient(
    avp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, residual_tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given ``v -> A v``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        if rr.item() < residual_tol:
            break
        ap = avp(p)
        alpha = rr / p.dot(ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def fisher_vector_product(
    kl_fn: Callable[[], Tensor], params: Sequence[Tensor], damping: float
) -> Callable[[Tensor], Tensor]:
    """``v -> (H_KL + damping I) v``, H_KL the Hessian of the mean KL at the current params.

    ``kl_fn`` must return the mean KL between the old (fixed) and current policies; its
    gradient is built once and reused for every product.
    """
    kl = kl_fn()
    grad_kl = flat_grad(kl, params, create_graph=True)

    def fvp(v: Tensor) -> Tensor:
        hv = flat_grad(grad_kl.dot(v), params, retain_graph=True)
        return hv + damping * v

    return fvp


@dataclass
class TRPOStepInfo:
    accepted: bool
    step_fraction: float
    surrogate_before: float
    surrogate_after: float
    expected_improve: float
    kl: float
    num_backtracks: int


def line_search(
    params: Sequence[Tensor],
    surrogate_fn: Callable[[], Tensor],
    kl_fn: Callable[[], Tensor],
    full_step: Tensor,
    expected_improve: float,
    max_kl: float,
    surrogate_before: float,
    backtrack_coeff: float = 0.8,
    max_backtracks: int = 10,
    no_grad: bool = True,
    surrogate_and_kl_fn: Callable[[], tuple[Tensor, Tensor]] | None = None,
) -> TRPOStepInfo:
    """Try ``theta + frac * full_step`` for ``frac = backtrack_coeff^i``; accept the first one
    with mean KL <= ``max_kl`` and a positive surrogate improvement, else restore ``theta``.
    ``surrogate_and_kl_fn`` (optional) returns both at once, when they share costly work."""
    old = flat_params(params)
    ctx = torch.no_grad if no_grad else nullcontext
    kl_val, surr_val = float("nan"), surrogate_before
    for i in range(max_backtracks):
        frac = backtrack_coeff**i
        set_flat_params_(params, old + frac * full_step)
        with ctx():
            if surrogate_and_kl_fn is not None:
                surr_t, kl_t = surrogate_and_kl_fn()
                surr_val, kl_val = float(surr_t.detach()), float(kl_t.detach())
            else:
                surr_val = float(surrogate_fn().detach())
                kl_val = float(kl_fn().detach())
        if math.isfinite(surr_val) and math.isfinite(kl_val) and kl_val <= max_kl and surr_val > surrogate_before:
            return TRPOStepInfo(True, frac, surrogate_before, surr_val,
                                expected_improve * frac, kl_val, i)
    set_flat_params_(params, old)
    return TRPOStepInfo(False, 0.0, surrogate_before, surrogate_before, 0.0, 0.0, max_backtracks)


def trpo_step(
    params: Sequence[Tensor],
    surrogate_fn: Callable[[], Tensor],
    kl_fn: Callable[[], Tensor],
    max_kl: float = 0.01,
    damping: float = 0.1,
    cg_iters: int = 10,
    backtrack_coeff: float = 0.8,
    max_backtracks: int = 10,
    line_search_no_grad: bool = True,
    fvp_kl_fn: Callable[[], Tensor] | None = None,
    surrogate_and_kl_fn: Callable[[], tuple[Tensor, Tensor]] | None = None,
) -> TRPOStepInfo:
    """One natural-gradient step that maximizes ``surrogate_fn`` subject to mean KL <= max_kl.

    The step direction ``x = F^-1 g`` comes from conjugate gradient; it is scaled to the
    trust-region boundary ``sqrt(2 max_kl / x^T F x)`` and then backtracked. ``fvp_kl_fn``
    (default ``kl_fn``) may estimate the KL on a subsample to make Fisher products cheaper;
    the line search always checks the full ``kl_fn``; ``surrogate_and_kl_fn`` (optional)
    gives the line search both values from one evaluation.
    """
    params = list(params)
    surr = surrogate_fn()
    g = flat_grad(surr, params)
    fvp = fisher_vector_product(fvp_kl_fn or kl_fn, params, damping)
    x = conjugate_gradient(fvp, g, cg_iters)
    shs = x.dot(fvp(x))
    if not torch.isfinite(shs) or shs.item() <= 0:
        s = float(surr.detach())
        return TRPOStepInfo(False, 0.0, s, s, 0.0, 0.0, 0)
    full_step = torch.sqrt(2.0 * max_kl / shs) * x
    expected = float(g.dot(full_step))
    return line_search(params, surrogate_fn, kl_fn, full_step, expected, max_kl, float(surr.detach()),
                       backtrack_coeff, max_backtracks, line_search_no_grad, surrogate_and_kl_fn)
