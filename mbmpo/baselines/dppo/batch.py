"""DPPO's per-iteration data: one worker's batch (samples or K-step windows) and the pieces
of a lockstep gradient step."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor


class Batch(NamedTuple):
    """One worker's batch, in the units minibatches are drawn from: samples ``[n, ...]``
    (feed-forward) or K-step windows, time-major ``[K, S, ...]`` (recurrent)."""

    obs: Tensor
    act: Tensor
    logp: Tensor
    adv: Tensor
    ret: Tensor
    old_val: Tensor
    resets: Tensor | None  # [K, S] episode starts
    pi_h0: Tensor | None  # [S, state] policy state at each window's first step
    v_h0: Tensor | None

    @property
    def recurrent(self) -> bool:
        return self.resets is not None

    @property
    def num_units(self) -> int:
        return self.obs.shape[1] if self.recurrent else self.obs.shape[0]

    @property
    def steps_per_unit(self) -> int:
        return self.obs.shape[0] if self.recurrent else 1

    def take(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        """Rows of ``x`` for the units ``idx`` (all when None), flattened to ``[n, ...]``."""
        if not self.recurrent:
            return x if idx is None else x[idx]
        x = x if idx is None else x[:, idx]
        return x.reshape(-1, *x.shape[2:])


def take_dist(dist: Any, batch: Batch, idx: Tensor | None = None) -> Any:
    """A distribution's tensors restricted to the units ``idx`` of ``batch``, flattened."""
    return type(dist)(*(batch.take(f, idx) for f in dist))


class LocalGrads(NamedTuple):
    """One worker's part of a lockstep step: gradients (None: not computed), extras and
    sample counts of the policy ([kl, surrogate, loss]) and of the value function ([loss])."""

    pi_grads: Sequence[Tensor] | None
    pi_extras: Tensor
    pi_n: int
    v_grads: Sequence[Tensor] | None
    v_extras: Tensor
    v_n: int


class GradJob(NamedTuple):
    """A gradient computation running in the update thread (D-of-W mode): its (iteration,
    step) and future."""

    step: tuple[int, int]
    future: concurrent.futures.Future


def reduce_step(all_reduce: Callable[[Tensor], Tensor],
                groups: Sequence[tuple[list[Tensor], Sequence[Tensor] | None, int, Tensor]],
                tail: Sequence[float]) -> tuple[list[tuple[Tensor, float]], Tensor]:
    """One all_reduce (``all_reduce``: sums a flat tensor over the workers) for a lockstep step. ``groups`` are (params, local gradients or
    None, weight, extras): each group's gradients and extras are summed weighted by the
    workers' weights (sample counts; 0 for a worker that sends nothing), and the weighted
    mean gradient of a group with total weight > 0 is left in ``p.grad``. ``tail`` is
    summed as is. Returns [(weighted mean of extras, total weight)] per group and the
    summed tail."""
    dev = groups[0][0][0].device
    grads_flat, extras_flat, weights = [], [], []
    for params, grads, w, extras in groups:
        if grads is None or w == 0:
            grads_flat.append(torch.zeros(sum(p.numel() for p in params), device=dev))
        else:
            grads_flat += [g.reshape(-1) * w for g in grads]
        extras_flat.append(extras.float().to(dev) * w)
        weights.append(float(w))
    num_g, num_ex = sum(t.numel() for t in grads_flat), sum(t.numel() for t in extras_flat)
    flat = all_reduce(torch.cat([*grads_flat, *extras_flat,
                                       torch.tensor([*weights, *tail], device=dev)]))
    totals = flat[num_g + num_ex : num_g + num_ex + len(groups)].tolist()
    out, i, j = [], 0, num_g
    for (params, _, _, extras), total in zip(groups, totals):
        if total > 0:
            g = flat[i : i + sum(p.numel() for p in params)] / total
            k = 0
            for p in params:
                p.grad = g[k : k + p.numel()].view_as(p).clone()
                k += p.numel()
        i += sum(p.numel() for p in params)
        out.append((flat[j : j + extras.numel()] / max(total, 1.0), total))
        j += extras.numel()
    return out, flat[num_g + num_ex + len(groups) :]
