"""Surrogate objectives shared by the policy-gradient algorithms (pure functions)."""

from __future__ import annotations

import torch
from torch import Tensor


def clipped_surrogate(ratio: Tensor, adv: Tensor, clip: float) -> Tensor:
    """PPO's clipped surrogate per sample (Schulman et al. 2017, eq. 7):
    ``min(r A, clip(r, 1 - eps, 1 + eps) A)``; any shape, elementwise."""
    return torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
