"""Running mean/std statistics shared by observation/reward normalization and the dynamics model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class RunningMeanStd(nn.Module):
    """Streaming mean and (population) variance over the leading batch dimension.

    Statistics are kept in float64 buffers so they survive long runs and are saved with
    ``state_dict``. Two instances (e.g. two distributed workers) merge exactly with
    :meth:`merge` (Chan et al. parallel variance). ``std`` is ``sqrt(var + eps)``, so
    constant features never give NaN or inf.

    Args:
        shape: feature shape (``()`` for scalars).
        eps: added to the variance before the square root.
    """

    def __init__(self, shape: tuple[int, ...] | int = (), eps: float = 1e-8):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.eps = eps
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self._n = 0.0  # ``count`` on the host: reading it never waits for an accelerator

    @property
    def num_samples(self) -> float:
        """The number of samples absorbed (``count``, read without a device round trip)."""
        return self._n

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._n = float(self.count)

    @property
    def std(self) -> Tensor:
        return torch.sqrt(self.var + self.eps)

    def update(self, x: Tensor) -> None:
        """Add a batch ``x`` of shape ``[B, *shape]``."""
        # no autograd decorator: it costs more than the update on one env step; inputs are
        # detached and the buffers never require grad.
        x = x.detach().to(self.mean.device, torch.float64).reshape(-1, *self.mean.shape)
        if x.shape[0] == 0:
            return
        var, mean = torch.var_mean(x, dim=0, unbiased=False)
        self._merge(mean, var, float(x.shape[0]))

    def update_from_moments(self, mean: Tensor, var: Tensor, count: float | Tensor) -> None:
        """Merge in the statistics of another sample (mean, population var, count)."""
        if float(count) <= 0:
            return
        self._merge(mean.detach().to(self.mean), var.detach().to(self.var), float(count))

    def _merge(self, mean: Tensor, var: Tensor, count: float) -> None:
        # Chan et al. parallel update; with self.count == 0 it reduces to (mean, var).
        total = self._n + count
        w = count / total  # weight of the new sample
        delta = mean - self.mean
        self.var.mul_(1.0 - w).add_(var, alpha=w).add_(delta * delta, alpha=w * (1.0 - w))
        self.mean.add_(delta, alpha=w)
        self.count.fill_(total)
        self._n = total

    def merge(self, other: RunningMeanStd) -> None:
        """Fold another instance's statistics into this one (in place)."""
        self.update_from_moments(other.mean, other.var, other.count)

    def reset(self) -> None:
        self.mean.zero_()
        self.var.fill_(1.0)
        self.count.zero_()
        self._n = 0.0

    def normalize(self, x: Tensor, clip: float | None = None) -> Tensor:
        """``(x - mean) / std``, optionally clipped to ``[-clip, clip]``; keeps ``x.dtype``."""
        y = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return y.clamp(-clip, clip) if clip is not None else y

    def denormalize(self, y: Tensor) -> Tensor:
        """Inverse of :meth:`normalize` (without clipping)."""
        return y * self.std.to(y.dtype) + self.mean.to(y.dtype)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mean.shape)}, count={int(self.count.item())}"


# ----- merging the statistics of distributed workers -------------------------------------
# Heess et al. 2017 (appendix A): workers update their normalization statistics locally after
# every env step and apply the local changes to the global statistics after each iteration.
# Each worker starts the iteration from the same global statistics ``base``; the samples it
# added since then are recovered exactly with ``moments_since`` and pooled across workers with
# a single sum (one all_reduce of ``pack_new_moments``), shifted by the base mean so the sums
# of squares do not cancel catastrophically.


def moments_since(rms: RunningMeanStd, base: dict[str, Tensor]) -> tuple[Tensor, Tensor, float]:
    """Mean, population variance and count of the samples ``rms`` absorbed after ``base``.

    ``base`` is a ``state_dict()`` copy of ``rms`` taken earlier; this inverts the parallel
    merge of :meth:`RunningMeanStd.update` exactly (up to rounding).
    """
    n0, n1 = float(base["count"]), float(rms.count)
    n = n1 - n0
    if n <= 0:
        return torch.zeros_like(rms.mean), torch.zeros_like(rms.var), 0.0
    m0, v0 = base["mean"].to(rms.mean), base["var"].to(rms.var)
    mean = m0 + (rms.mean - m0) * (n1 / n)
    delta = mean - m0
    m2 = rms.var * n1 - v0 * n0 - delta * delta * (n0 * n / n1)
    return mean, (m2 / n).clamp_min(0.0), n


def pack_new_moments(stats: Sequence[tuple[RunningMeanStd, dict[str, Tensor]]]) -> Tensor:
    """One float64 vector holding, per ``(rms, base)`` pair, ``[n, n (m - s), n (v + (m - s)^2)]``.

    ``m, v, n`` are the moments of the samples added since ``base`` and ``s`` is the base mean
    (identical on every worker). Summing the vectors of all workers pools their new samples.
    """
    parts = []
    for rms, base in stats:
        mean, var, n = moments_since(rms, base)
        d = mean - base["mean"].to(mean)
        parts += [torch.tensor([n], dtype=torch.float64, device=mean.device),
                  (n * d).reshape(-1), (n * (var + d * d)).reshape(-1)]
    return torch.cat(parts)


def merge_new_moments(stats: Sequence[tuple[RunningMeanStd, dict[str, Tensor]]], summed: Tensor) -> None:
    """Set every ``rms`` to ``base`` plus the pooled new samples in ``summed``.

    ``summed`` is the sum over workers of :func:`pack_new_moments`; all workers calling this
    with the same ``summed`` end with identical statistics.
    """
    i = 0
    for rms, base in stats:
        f = rms.mean.numel()
        n = float(summed[i])
        s1 = summed[i + 1 : i + 1 + f].reshape(rms.mean.shape)
        s2 = summed[i + 1 + f : i + 1 + 2 * f].reshape(rms.mean.shape)
        i += 1 + 2 * f
        rms.load_state_dict(base)
        if n > 0:
            d = s1 / n
            rms.update_from_moments(base["mean"].to(d) + d, (s2 / n - d * d).clamp_min(0.0), n)
    if i != summed.numel():
        raise ValueError(f"merged moments have {summed.numel()} entries, expected {i}")
