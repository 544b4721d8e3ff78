"""A fall-hazard cost on imagined states, learned from the real episodes.

A gait can carry a fall hazard at every step that the dynamics models miss: restarted near a
real fall, the real env falls in a share of cases while imagined draws of the models do not,
so a policy optimized in the models cannot trade speed for safety. A classifier learns the
rate from the real data instead: ``p(s) = P(a lasting fall of the real reward starts within
the next N steps | s)``, with labels from :func:`~mbmpo.mbmpo.extensions.falls.fall_ahead`,
and every imagined reward pays ``c p(s')``. With ``c`` about the value lost in a fall divided
by N, the cost is the expected loss per step of the gait's hazard.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mbmpo.errors import ConfigError
from mbmpo.mbmpo.extensions.base import ImaginedStep, Plugin, seeded_value_net
from mbmpo.mbmpo.extensions.falls import fall_ahead
from policies.value import minibatch_pass


def fit_hazard(net: nn.Module, optimizer: torch.optim.Optimizer, feats: Tensor, labels: Tensor, epochs: int,
               batch_size: int = 512, generator: torch.Generator | None = None) -> dict[str, float]:
    """``epochs`` passes of minibatch binary cross-entropy on the rows with a known label.

    Args:
        net: maps ``[B, D]`` features to ``[B]`` logits.
        feats: ``[B, D]``; labels ``[B]`` in {0, 1, NaN} (NaN rows are left out).

    Returns:
        ``fall/bce`` (mean loss of the last pass; NaN without known rows), ``fall/rate`` (share
        of known rows labelled 1), ``fall/known_rows`` and ``fall/mean_p`` (mean predicted
        probability over the known rows).
    """
    known = torch.isfinite(labels)
    x, y = feats[known].float(), labels[known].float()
    n_rows = len(y)
    if n_rows == 0:
        return {"fall/bce": float("nan"), "fall/rate": float("nan"), "fall/known_rows": 0, "fall/mean_p": float("nan")}
    loss = float("nan")
    for _ in range(epochs):
        loss = minibatch_pass(net, optimizer, x, y, F.binary_cross_entropy_with_logits, batch_size, generator)
    with torch.no_grad():
        mean_p = float(torch.sigmoid(net(x)).mean())
    return {"fall/bce": loss, "fall/rate": float(y.mean()), "fall/known_rows": n_rows, "fall/mean_p": mean_p}


def hazard_cost(net: nn.Module, feats: Tensor, coef: float) -> Tensor:
    """``coef * sigmoid(net(feats))``: the cost of reaching each state, ``[N, D]`` -> ``[N]``."""
    with torch.no_grad():
        return coef * torch.sigmoid(net(feats.float()))


@dataclass
class FallHazardConfig:
    """Settings of the fall-hazard cost (``cost`` 0 = off)."""

    cost: float = 0.0
    """c of the cost ``c p(s')`` on imagined rewards; 0 = off."""
    horizon: int = 50
    """N: real steps ahead that a fall counts for the label."""
    window: int = 100
    """W: a fall starts where the mean reward over the next W steps is at least ``min_drop``
    below the mean over the W steps before; a long window counts lasting falls, not stumbles
    that recover."""
    min_drop: float = 2.0
    """Reward drop per step that counts as a fall (in the task's reward units)."""
    epochs: int = 3
    """Passes over the real data set per fit of the classifier."""

    @property
    def enabled(self) -> bool:
        return self.cost > 0

    def validate(self, core: Any) -> None:
        if not (self.cost >= 0 and math.isfinite(self.cost)) or not self.min_drop > 0:
            raise ConfigError(f"fall_hazard.cost must be a finite number >= 0 (0 = off) and fall_hazard.min_drop "
                              f"> 0, got {self.cost}, {self.min_drop}")
        for name in ("horizon", "window", "epochs"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"fall_hazard.{name} must be > 0, got {getattr(self, name)}")


class FallHazard(Plugin):
    """Labels real rows with :func:`fall_ahead`, fits ``p(s)`` after every model fit and
    subtracts ``cost * p(s')`` from every imagined reward (logged as ``imagined/fall_cost``)."""

    name = "fall_hazard"
    cost_key = "imagined/fall_cost"

    def __init__(self, config: FallHazardConfig):
        self.config = config

    def setup(self, algo: Any) -> None:
        super().setup(algo)
        self.net = seeded_value_net(algo, 3, algo.feat_dim)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)

    def dataset_columns(self) -> dict[str, float]:
        return {"fall_ahead": float("nan")}  # unknown until labelled

    def label_real(self, rollout) -> dict[str, Tensor]:
        c = self.config
        return {"fall_ahead": fall_ahead(rollout.rewards, rollout.dones, rollout.timesteps, c.window, c.min_drop,
                                         c.horizon)}

    def fit_real(self, data: dict[str, Tensor]) -> dict[str, float]:
        t0 = time.perf_counter()
        with torch.enable_grad():
            stats = fit_hazard(self.net, self.optimizer, self.algo.features(data["next_obs"]), data["fall_ahead"],
                               self.config.epochs, generator=self.algo.generator)
        stats["time/fall_fit_s"] = time.perf_counter() - t0
        return stats

    def cost_of(self, next_obs: Tensor) -> Tensor:
        """``cost * p(s')`` for ``[N, obs_dim]`` reached states -> ``[N]``."""
        return hazard_cost(self.net, self.algo.features(next_obs), self.config.cost)

    def reward_cost(self, step: ImaginedStep) -> Tensor:
        return self.cost_of(step.next_obs)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
