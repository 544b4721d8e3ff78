"""Imagined rollouts started where the real reward fell: a share of the start states drawn
from the real states with the largest reward drops, aimed at stumbles the models foresee only
a few steps ahead, which uniformly drawn starts rarely reach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mbmpo.errors import ConfigError
from mbmpo.mbmpo.extensions.base import Plugin
from mbmpo.mbmpo.extensions.falls import reward_drop


@dataclass
class FocusStartsConfig:
    """Settings of focused imagined starts (``fraction`` 0 = off; needs ``imagined_init: dataset``)."""

    fraction: float = 0.0
    """Share of each batch of imagined start states drawn from the top ``quantile`` of real rows
    by reward drop over ``window`` steps (rows without a drop are never picked). 0 = off."""
    window: int = 25
    """Real steps on each side of a step for the reward drop."""
    quantile: float = 0.01
    """Share of the data set's rows, by largest reward drop, that focused starts are drawn from."""

    @property
    def enabled(self) -> bool:
        return self.fraction > 0

    def validate(self, core: Any) -> None:
        if not 0 <= self.fraction <= 1 or not 0 < self.quantile <= 1 or self.window < 1:
            raise ConfigError(f"focus_starts.fraction must be in [0, 1], focus_starts.quantile in (0, 1] and "
                              f"focus_starts.window >= 1, got {self.fraction}, {self.quantile}, {self.window}")
        if self.enabled and core.imagined_init != "dataset":
            raise ConfigError(f"focus_starts.fraction {self.fraction} needs imagined_init 'dataset', "
                              f"got {core.imagined_init!r}")


def focus_rows(priority: Tensor, quantile: float) -> Tensor:
    """Rows that focused starts are drawn from: the top ``quantile`` of ``priority [size]``,
    without rows whose priority is 0 (``[<= size]`` row indices)."""
    k = max(1, int(quantile * len(priority)))
    top = torch.topk(priority, min(k, len(priority))).indices
    return top[priority[top] > 0]


class FocusStarts(Plugin):
    """Stores each real row's reward drop and replaces ``fraction`` of the imagined start rows by
    rows drawn from :func:`focus_rows` (logged: ``imagined/focus_rows``, ``imagined/focus_min_drop``)."""

    name = "focus_starts"

    def __init__(self, config: FocusStartsConfig):
        self.config = config
        self._rows: tuple[Tensor, Tensor] | None = None  # (priority column, its focus rows)

    def _focus_rows(self, priority: Tensor) -> Tensor:
        # once per data set, not per draw: the boolean mask in focus_rows waits for the device
        if self._rows is None or self._rows[0] is not priority:
            self._rows = (priority, focus_rows(priority, self.config.quantile))
        return self._rows[1]

    def dataset_columns(self) -> dict[str, float]:
        return {"priority": 0.0}

    def label_real(self, rollout) -> dict[str, Tensor]:
        return {"priority": reward_drop(rollout.rewards, rollout.dones, rollout.timesteps, self.config.window)}

    def fit_real(self, data: dict[str, Tensor]) -> dict[str, float]:
        rows = self._focus_rows(data["priority"])
        return {"imagined/focus_rows": len(rows),
                "imagined/focus_min_drop": float(data["priority"][rows].min()) if len(rows) else 0.0}

    def start_rows(self, idx: Tensor, data: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        n = len(idx)
        m = round(self.config.fraction * n)
        if m > 0:
            rows = self._focus_rows(data["priority"])
            if len(rows) > 0:
                # spread over the batch: rows are split into contiguous blocks per task and model
                dev = generator.device
                where = torch.randperm(n, generator=generator, device=dev)[:m]
                idx[where] = rows[torch.randint(len(rows), (m,), generator=generator, device=dev)]
        return idx
