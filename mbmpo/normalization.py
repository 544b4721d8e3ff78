"""Running mean/std statistics shared by observation/reward normalization and the dynamics model."""

from __future__ import annotations

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
        total = self.count.item() + count
        w = count / total  # weight of the new sample
        delta = mean - self.mean
        self.var.mul_(1.0 - w).add_(var, alpha=w).add_(delta * delta, alpha=w * (1.0 - w))
        self.mean.add_(delta, alpha=w)
        self.count.fill_(total)

    def merge(self, other: RunningMeanStd) -> None:
        """Fold another instance's statistics into this one (in place)."""
        self.update_from_moments(other.mean, other.var, other.count)

    def reset(self) -> None:
        self.mean.zero_()
        self.var.fill_(1.0)
        self.count.zero_()

    def normalize(self, x: Tensor, clip: float | None = None) -> Tensor:
        """``(x - mean) / std``, optionally clipped to ``[-clip, clip]``; keeps ``x.dtype``."""
        y = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return y.clamp(-clip, clip) if clip is not None else y

    def denormalize(self, y: Tensor) -> Tensor:
        """Inverse of :meth:`normalize` (without clipping)."""
        return y * self.std.to(y.dtype) + self.mean.to(y.dtype)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mean.shape)}, count={int(self.count.item())}"
