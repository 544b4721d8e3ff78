"""A state value fitted by TD(0) that bootstraps imagined rollouts at their horizon
(model-based value expansion, Feinberg et al. 2018; a terminal value on imagined paths as in
Clavera et al. 2020, MAAC).

An imagined rollout of H steps values what follows step H at 0. Where the real task has a
lasting failure (falling over and staying down), a fall within the horizon then costs at most
H steps of reward, far less than the rest of a real episode, and the policy is not pushed to
avoid it. V is fitted either on the real data set (the value of the policies that collected
it) or on each meta-step's pre-update imagined transitions (the value of theta in the models).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mbmpo.errors import ConfigError
from mbmpo.mbmpo.extensions.base import Plugin, seeded_value_net
from policies.value import half_mse, minibatch_pass

FIT_ON = ("off", "real", "imagined")


def td_targets(net: nn.Module, rewards: Tensor, next_feats: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """TD(0) targets in the scaled units of ``net``, which predicts ``(1 - gamma) V(s)``:
    ``y = (1 - gamma) r + gamma (1 - terminated) net(s')``; ``[B]`` float32.

    The scaling keeps the network's outputs near the size of one reward (a value of ~1 / (1 - gamma)
    rewards would be ~100 times larger). A time-limit end is not ``terminated`` and bootstraps.
    """
    with torch.no_grad():
        nv = net(next_feats.float())
    return (1 - gamma) * rewards.float() + gamma * (~terminated.bool()).float() * nv


def fit_td_value(net: nn.Module, optimizer: torch.optim.Optimizer, feats: Tensor, rewards: Tensor,
                 next_feats: Tensor, terminated: Tensor, gamma: float, epochs: int,
                 batch_size: int = 256, generator: torch.Generator | None = None) -> dict[str, float]:
    """``epochs`` rounds of fitted value iteration on transitions: each round computes TD(0)
    targets with a frozen copy of ``net`` (one Bellman backup per round), then regresses ``net``
    on them for one pass of minibatches.

    Args:
        net: maps ``[B, D]`` features to ``[B]``, in units of ``(1 - gamma) V``.
        feats, next_feats: ``[B, D]``; rewards ``[B]``; terminated ``[B]`` bool.

    Returns:
        ``value/td_loss`` (mean squared TD error of the last round, scaled units) and
        ``value/mean`` (mean V over the data, in return units).
    """
    x = feats.float()
    loss = 0.0
    for _ in range(epochs):
        y = td_targets(copy.deepcopy(net), rewards, next_feats, terminated, gamma)
        loss = minibatch_pass(net, optimizer, x, y, half_mse, batch_size, generator)
    with torch.no_grad():
        mean_v = float(net(x).mean()) / (1 - gamma)
    return {"value/td_loss": 2 * loss, "value/mean": mean_v}


def terminal_values(net: nn.Module, next_feats: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """What to add to the last imagined reward of each row: ``gamma V(s_H)``, 0 where the row's
    last step terminated. ``next_feats`` ``[N, D]``, ``terminated`` ``[N]`` -> ``[N]`` float64."""
    with torch.no_grad():
        v = net(next_feats.float()).double() / (1 - gamma)
    return gamma * v * (~terminated.bool()).double()


@dataclass
class TerminalValueConfig:
    """Settings of the terminal value (``fit_on`` 'off' = off)."""

    fit_on: str = "off"
    """'real': fit V on the real data set after every model fit; 'imagined': on each
    meta-step's pre-update imagined transitions; 'off'."""
    epochs: int = 5
    """TD(0) rounds (one Bellman backup and one pass over the data each) per fit."""

    @property
    def enabled(self) -> bool:
        return self.fit_on != "off"

    def validate(self, core: Any) -> None:
        if self.fit_on not in FIT_ON:
            raise ConfigError(f"terminal_value.fit_on {self.fit_on!r} is not allowed; use one of {list(FIT_ON)}")
        if not self.epochs > 0:
            raise ConfigError(f"terminal_value.epochs must be > 0, got {self.epochs}")


class TerminalValue(Plugin):
    """Adds ``gamma V(s_H)`` to the last reward of every imagined rollout that reaches the horizon."""

    name = "terminal_value"
    bootstrap_key = "imagined/terminal_value"

    def __init__(self, config: TerminalValueConfig):
        self.config = config

    def setup(self, algo: Any) -> None:
        super().setup(algo)
        self.net = seeded_value_net(algo, 2, algo.feat_dim)
        with torch.no_grad():  # V = 0 until fitted: early bootstraps add nothing, not noise
            self.net.net[-1].weight.zero_()
            self.net.net[-1].bias.zero_()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)

    def fit(self, obs: Tensor, reward: Tensor, next_obs: Tensor, terminated: Tensor) -> dict[str, float]:
        """TD(0) fit on transitions ``[..., obs_dim]`` / ``[...]``."""
        t0 = time.perf_counter()
        f, d = self.algo.features, obs.shape[-1]
        with torch.enable_grad():
            stats = fit_td_value(self.net, self.optimizer, f(obs.reshape(-1, d)), reward.reshape(-1),
                                 f(next_obs.reshape(-1, d)), terminated.reshape(-1), self.algo.config.gamma,
                                 self.config.epochs, generator=self.algo.generator)
        stats["time/value_fit_s"] = time.perf_counter() - t0
        return stats

    def fit_real(self, data: dict[str, Tensor]) -> dict[str, float]:
        if self.config.fit_on != "real":
            return {}
        return self.fit(data["obs"], data["reward"], data["next_obs"], data["terminated"])

    def on_imagined(self, rollout) -> dict[str, float]:
        if self.config.fit_on != "imagined":
            return {}
        return self.fit(rollout.obs, rollout.rewards, rollout.next_obs, rollout.terminated)

    def bootstrap(self, next_obs: Tensor, terminated: Tensor) -> Tensor:
        return terminal_values(self.net, self.algo.features(next_obs), terminated, self.algo.config.gamma)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
